"""What one ``/metrics`` scrape costs the worker after a benchmark's stream.

A worker's runtime as ``make bench`` runs it (default settings: the default
path group rule, canary analysis on, OTLP and a store configured) takes the
synthetic stream (pipeline.dev.synth, seed 42, batches of 1,000) through its
real batch handler; the store answers in process as bench/null_store.py does
and no span exporter runs (spans queue and are dropped when full). The canary
analysis' last verdicts are faked, one per path group seen. Then
``Telemetry.render`` is timed (wall clock, median of ``--renders``) and the page
counted: samples (``parse_samples``), bytes, and the samples of the largest
families. ``--profile`` adds cProfile's top functions over 20 renders.

    .venv/bin/python bench/metrics_render.py [--events 200000] [--renders 50] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.runtime import Runtime
from pipeline.config import Settings
from pipeline.core.model import InputMessage, KafkaCoordinates
from pipeline.dev.synth import generate
from pipeline.telemetry import parse_samples

BATCH = 1000
PARTITIONS = 4


async def null_bulk(body: bytes) -> tuple[int, dict[str, Any]]:
    """bench/null_store.py's answer: every document of the bulk body indexed."""
    n = body.count(b"\n") // 2
    return 200, {"took": 0, "errors": False, "items": [{"index": {"status": 201}}] * n}


def worker_after(events: int) -> Runtime:
    # drop_newest: no exporter runs, and block mode would wait for room forever.
    runtime = Runtime(Settings(otlp_when_full="drop_newest"))
    assert runtime.es_service is not None, "the default settings configure a store"
    runtime.es_service.bulk = null_bulk  # type: ignore[method-assign]
    app = SimpleNamespace(service=lambda cls: cls, page=lambda path: lambda f: f, producer=None)
    runtime.attach(app)
    values = list(generate(events, seed=42))
    now = time.time_ns()

    async def feed() -> None:
        for start in range(0, len(values), BATCH):
            await runtime.handler.handle(
                [
                    InputMessage(
                        value,
                        None,
                        KafkaCoordinates("bench", (start // BATCH) % PARTITIONS, start + i),
                        now - (i % 7) * 1_000_000_000,
                    )
                    for i, value in enumerate(values[start : start + BATCH])
                ]
            )

    asyncio.run(feed())
    metrics = runtime.request_metrics
    assert metrics is not None
    groups = sorted({key[0] for key in metrics.requests})
    app.grayscope_canary = SimpleNamespace(  # type: ignore[attr-defined]
        verdicts=[
            SimpleNamespace(path_group=group, decision=("hold", "promote")[i % 2])
            for i, group in enumerate(groups)
        ]
    )
    return runtime


def render(runtime: Runtime) -> bytes:
    """``Telemetry.render`` without an event loop (it never awaits)."""
    coroutine = runtime.telemetry.render()
    try:
        coroutine.send(None)
    except StopIteration as done:
        body: bytes = done.value[0]
        return body
    raise AssertionError("Telemetry.render awaited something")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--renders", type=int, default=50)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    runtime = worker_after(args.events)
    body = render(runtime)
    samples = parse_samples(body.decode())
    families = Counter(name for name, _, _ in samples)
    seconds = []
    for _ in range(args.renders):
        started = time.perf_counter()
        render(runtime)
        seconds.append(time.perf_counter() - started)
    print(
        f"{args.events:,} events: {len(samples):,} samples, {len(body):,} bytes; "
        f"render median {statistics.median(seconds) * 1e3:.2f} ms "
        f"(min {min(seconds) * 1e3:.2f}, {args.renders} renders)"
    )
    print("largest:", ", ".join(f"{name} {n}" for name, n in families.most_common(5)))
    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(20):
            render(runtime)
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(12)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
