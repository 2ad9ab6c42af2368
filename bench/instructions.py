"""Instructions per event of the batch handler's per-event stages, for callgrind.

Wall time on this VM swings with the hypervisor's steal (2-28 %); instruction
counts do not. This runs exactly the per-event work of ``BatchHandler.handle``
(``process_batch`` -> ``build_bulk_items`` -> ``encode_spans`` ->
``tally_results``) over a fixed synthetic stream, without I/O, so that two
builds can be compared by callgrind's instruction count::

    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \\
        .venv/bin/python bench/instructions.py --events 20000
    callgrind_annotate /tmp/cg.out | head -20      # "PROGRAM TOTALS" = instructions

``--shell`` adds what the worker's interpreted shell does per event around them:
the InputMessages made of fetched records (agents/batching.py), the elasticsearch
sink's request bodies (``split_by_bytes``, ``build_bulk_body``; since session 20), the request
metrics (``RequestMetrics.add_batch``), the canary observer (``observe_tallies``)
and the delivery-latency histogram (``BatchHandler._after_delivery``); with the
worker's garbage-collector settings (``GC_THRESHOLDS``, ``gc.freeze()`` after the
warm-up, as the runtime does after start-up).

``--compare`` runs it under callgrind twice, with N and N/10 events, and prints
the difference per event (start-up, imports and warm-up cancel out; both runs
generate the same N-event synthetic stream, so its generation cancels out too). bench/README.md,
"Session 7", has the figures for the tricks re-measured with it.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from agents.batching import BatchingConsumer, BatchTopicKeys, MessagePartitionRecords
from agents.handler import STAGE_CHUNK
from pipeline.canary.observer import CanaryObserver, new_tallies
from pipeline.commands.worker import GC_THRESHOLDS
from pipeline.config import Settings
from pipeline.core.bulk import BulkItem, build_bulk_body, build_bulk_items, split_by_bytes
from pipeline.core.enrich import EnrichContext
from pipeline.core.extract.path_group import PathRules
from pipeline.core.model import InputMessage, KafkaCoordinates, message_values
from pipeline.core.otlp import encode_spans
from pipeline.core.process import SecondTallies, process_batch, record_ages, tally_results
from pipeline.dev.synth import PATH_RULES, generate
from pipeline.metrics.requests import RequestMetrics
from pipeline.native import loaded_native
from pipeline.telemetry import LatencyHistogram

# Events per pass of the stages, as BatchHandler.handle takes a batch (it was 1,000
# before session 16, when the handler took the whole batch at once).
BATCH = STAGE_CHUNK
# The sink's request size limit (GRAYSCOPE_ES_BULK_MAX_BYTES), its default.
BULK_MAX_BYTES = Settings.model_fields["es_bulk_max_bytes"].default
# Events run before the measured ones, to warm the memos as a running worker has them.
WARM_UP = 1000


def stream(events: int) -> list[InputMessage]:
    lines = list(generate(events, seed=7))
    return [
        InputMessage(line, None, KafkaCoordinates("access-logs", 0, i), 1_700_000_000_000_000_000)
        for i, line in enumerate(lines)
    ]


def run_stages(messages: list[InputMessage], ctx: EnrichContext, shell: Shell | None) -> int:
    """The handler's per-event stages over every batch; the number of bulk items."""
    items_total = 0
    for start in range(0, len(messages), BATCH):
        batch = messages[start : start + BATCH]
        if shell is not None:
            batch = shell.consume(batch)
        results = process_batch(message_values(batch), ctx)
        items, _letters = build_bulk_items(batch, results, "data_stream")
        encode_spans(batch, results)
        observed = new_tallies()
        tally_results(batch, results, observed)
        if shell is not None:
            shell.after(batch, results, observed, items)
        items_total += len(items)
    return items_total


@dataclass(slots=True)
class FetchedRecord:
    """What aiokafka's record unpacking hands ``MessagePartitionRecords`` of a record."""

    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None


class Shell:
    """The worker's per-event steps outside the core, as the worker calls them."""

    def __init__(self) -> None:
        consumer = cast(BatchingConsumer, SimpleNamespace(batch_topics=frozenset({"access-logs"})))
        self.partition_tp = TopicPartition("access-logs", 0)
        self.partition = MessagePartitionRecords(
            self.partition_tp, MemoryRecords(b""), [], 0, BatchTopicKeys(consumer), None, True, 0
        )
        self.metrics = RequestMetrics()
        self.observer = CanaryObserver(10, lambda aggregates: None, flush_interval=1.0)
        self.latency = LatencyHistogram()

    def consume(self, batch: list[InputMessage]) -> list[InputMessage]:
        """The batch as the worker's consumer makes it from fetched records: aiokafka
        unpacks each into a record object (here a stand-in with the same fields), and
        ``MessagePartitionRecords`` makes that the handler's message (session 17; before,
        an aiokafka ConsumerRecord that ``input_messages`` then converted)."""
        unpack = self.partition._consumer_record
        tp = self.partition_tp
        return [
            unpack(tp, FetchedRecord(m.coords.offset, 1_700_000_000_000, m.key, m.value))
            for m in batch
        ]

    def after(
        self,
        batch: list[InputMessage],
        results: list[Any],
        observed: SecondTallies,
        items: list[BulkItem],
    ) -> None:
        # The elasticsearch sink's request bodies (ElasticsearchSink.deliver), since session
        # 20: built whole, cut to the size limit only when over it (session 26).
        if len(build_bulk_body(items)) > BULK_MAX_BYTES:
            for run in split_by_bytes(items, BULK_MAX_BYTES):
                build_bulk_body(run)
        self.metrics.add_batch(results)
        self.observer.observe_tallies(observed)
        self.latency.observe_many(record_ages(batch, time.time_ns()))


def _instructions(events: int, shell: bool, stream_events: int) -> int:
    out = Path(tempfile.mkdtemp()) / "callgrind.out"
    subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            __file__,
            "--events",
            str(events),
            "--stream-events",
            str(stream_events),
            *(["--shell"] if shell else []),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    return next(
        int(line.split()[1])
        for line in out.read_text().splitlines()
        if line.startswith(("summary:", "totals:"))
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument(
        "--stream-events",
        type=int,
        default=0,
        help="generate this many events (at least --events) and process the first --events",
    )
    parser.add_argument(
        "--compare", action="store_true", help="run under callgrind; print instructions/event"
    )
    parser.add_argument(
        "--shell", action="store_true", help="with the worker's per-event shell steps"
    )
    args = parser.parse_args()
    if args.compare:
        # Python functions are invisible to callgrind: the difference of two runs that
        # differ only in the number of events cancels start-up, imports and warm-up.
        small = max(WARM_UP, args.events // 10)
        # The synthetic stream is generated in Python: the same size in both runs, or its
        # generation would count as per-event cost of the stages.
        big = _instructions(args.events, args.shell, args.events)
        little = _instructions(small, args.shell, args.events)
        print(
            f"{(big - little) / (args.events - small):.0f} instructions/event "
            f"({args.events} - {small} events)"
        )
        return 0
    ctx = EnrichContext(path_rules=PathRules.from_config([dict(r) for r in PATH_RULES], depth=2))
    messages = stream(max(args.events, args.stream_events))[: args.events]
    shell = Shell() if args.shell else None
    if shell is not None:
        gc.set_threshold(*GC_THRESHOLDS)
    run_stages(messages[:WARM_UP], ctx, shell)
    if shell is not None:
        gc.freeze()
    items = run_stages(messages, ctx, shell)
    print(f"{items} items; compiled: {len(loaded_native())} modules", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
