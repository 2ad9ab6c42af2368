"""Instructions per event of the batch handler's per-event stages, for callgrind.

Wall time on this VM swings with the hypervisor's steal (2-28 %); instruction
counts do not. This runs exactly the per-event work of ``BatchHandler.handle``
(``process_batch`` -> ``build_bulk_items`` -> ``encode_spans`` ->
``observations``) over a fixed synthetic stream, without I/O, so that two
builds can be compared by callgrind's instruction count::

    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \\
        .venv/bin/python bench/instructions.py --events 20000
    callgrind_annotate /tmp/cg.out | head -20      # "PROGRAM TOTALS" = instructions

``--compare`` runs it under callgrind twice, with N and N/10 events, and prints
the difference per event (start-up, imports and warm-up cancel out). bench/README.md,
"Session 7", has the figures for the tricks re-measured with it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline.core.bulk import build_bulk_items
from pipeline.core.enrich import EnrichContext
from pipeline.core.extract.path_group import PathRules
from pipeline.core.model import InputMessage, KafkaCoordinates
from pipeline.core.otlp import encode_spans
from pipeline.core.process import observations, process_batch
from pipeline.dev.synth import PATH_RULES, generate
from pipeline.native import loaded_native

BATCH = 1000


def stream(events: int) -> list[InputMessage]:
    lines = list(generate(events, seed=7))
    return [
        InputMessage(line, None, KafkaCoordinates("access-logs", 0, i), 1_700_000_000_000_000_000)
        for i, line in enumerate(lines)
    ]


def run_stages(messages: list[InputMessage], ctx: EnrichContext) -> int:
    """The handler's per-event stages over every batch; the number of bulk items."""
    items_total = 0
    for start in range(0, len(messages), BATCH):
        batch = messages[start : start + BATCH]
        results = process_batch([m.value or b"" for m in batch], ctx)
        items, _letters = build_bulk_items(batch, results, "data_stream")
        encode_spans(batch, results)
        observations(batch, results)
        items_total += len(items)
    return items_total


def _instructions(events: int) -> int:
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
        "--compare", action="store_true", help="run under callgrind; print instructions/event"
    )
    args = parser.parse_args()
    if args.compare:
        # Python functions are invisible to callgrind: the difference of two runs that
        # differ only in the number of events cancels start-up, imports and warm-up.
        small = max(BATCH, args.events // 10)
        big, little = _instructions(args.events), _instructions(small)
        print(
            f"{(big - little) / (args.events - small):.0f} instructions/event "
            f"({args.events} - {small} events)"
        )
        return 0
    ctx = EnrichContext(path_rules=PathRules.from_config([dict(r) for r in PATH_RULES], depth=2))
    messages = stream(args.events)
    run_stages(messages[:BATCH], ctx)  # warm the memos, as a running worker has them
    items = run_stages(messages, ctx)
    print(f"{items} items; compiled: {len(loaded_native())} modules", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
