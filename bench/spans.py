"""Span cost per event: ``build_span`` and the OTLP encoding, before and after.

Realistic events (:mod:`pipeline.dev.synth` through ``pipeline.core.process``
with the bundled GeoIP database) are enriched afresh for every run, so the
strings are new objects as in the worker (a string caches its hash: encoding
the same spans again would flatter the encoder's memo). Each stage is timed
on its own, in CPU time (steadier than wall time on a shared machine), best
of ``--repeat`` runs, with the garbage collector off (inside the worker,
collecting the SpanData objects adds a little on top):

  build    ``build_span`` now, and the one at ``--baseline-ref`` (read with
           ``git show``; skipped when git or the ref is unavailable)
  encode   ``encode_request`` (direct wire format) and the protobuf-object
           reference ``encode_spans(...).SerializeToString()``, in batches of
           ``--batch`` spans like the exporter's
  direct   what the worker runs: ``encode_request_span`` (request -> span bytes
           in one pass, no SpanData) plus ``frame_request`` per batch

    .venv/bin/python bench/spans.py
    .venv/bin/python bench/spans.py --events 50000 --json
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import bundled_city_db  # noqa: E402
from pipeline.core.enrich import EnrichContext  # noqa: E402
from pipeline.core.model import AccessRecord, Enrichment  # noqa: E402
from pipeline.core.otlp import encode_request_span  # noqa: E402
from pipeline.core.otlp_wire import frame_request  # noqa: E402
from pipeline.core.process import Enriched, process  # noqa: E402
from pipeline.dev.synth import generate  # noqa: E402
from pipeline.geoip import GeoIPResolver  # noqa: E402
from tests.oracles.otlp_reference import (  # noqa: E402
    SpanData,
    build_span,
    encode_request,
    encode_spans,
)

# The span builder as first written (before the cost work); the default "before".
DEFAULT_BASELINE_REF = "7589790"

Event = tuple[AccessRecord, Enrichment, str]


def context() -> EnrichContext:
    city = bundled_city_db()
    return EnrichContext(geoip=GeoIPResolver(city, "", 65536, 0) if city else None)


def events(raw: Sequence[bytes], ctx: EnrichContext) -> list[Event]:
    """Parsed and enriched events of ``raw`` (new objects on every call)."""
    out: list[Event] = []
    for offset, value in enumerate(raw):
        result = process(value, ctx)
        if isinstance(result, Enriched):
            out.append((result.record, result.enrichment, f"access-logs-0-{offset}"))
    return out


def baseline_builder(ref: str) -> Callable[..., SpanData | None] | None:
    """``build_span`` as it was at ``ref``, or None when git cannot show it."""
    try:
        source = subprocess.run(
            ["git", "show", f"{ref}:pipeline/core/span.py"],
            cwd=ROOT,
            capture_output=True,
            check=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    module = types.ModuleType("baseline_span")
    exec(compile(source, f"{ref}:pipeline/core/span.py", "exec"), module.__dict__)
    builder: Callable[..., SpanData | None] = module.build_span
    return builder


def best_cpu(prepare: Callable[[], Any], run: Callable[[Any], object], repeat: int) -> float:
    """Fewest CPU seconds of ``run(prepare())`` in ``repeat`` runs (GC off while timing)."""
    best = float("inf")
    for _ in range(repeat):
        data = prepare()
        gc.collect()
        gc.disable()
        try:
            start = time.process_time()
            run(data)
            best = min(best, time.process_time() - start)
        finally:
            gc.enable()
    return best


def build_all(builder: Callable[..., SpanData | None], evs: Sequence[Event]) -> list[SpanData]:
    return [s for r, e, k in evs if (s := builder(r, e, fallback_key=k)) is not None]


def batched(spans: list[SpanData], size: int) -> list[list[SpanData]]:
    return [spans[i : i + size] for i in range(0, len(spans), size)]


def reference_bytes(spans: Sequence[SpanData]) -> bytes:
    return encode_spans(spans).SerializeToString()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch", type=int, default=512, help="spans per export request")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--baseline-ref", default=DEFAULT_BASELINE_REF)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    raw = list(generate(args.events, seed=args.seed))
    ctx = context()

    def fresh_events() -> list[Event]:
        return events(raw, ctx)

    def fresh_batches() -> list[list[SpanData]]:
        return batched(build_all(build_span, fresh_events()), args.batch)

    def build_with(builder: Callable[..., SpanData | None]) -> Callable[[list[Event]], object]:
        return lambda evs: build_all(builder, evs)

    def encode_with(encode: Callable[[Sequence[SpanData]], bytes]) -> Callable[[Any], object]:
        return lambda batches: [encode(batch) for batch in batches]

    sample = fresh_events()
    batches = batched(build_all(build_span, sample), args.batch)
    if any(encode_request(b) != reference_bytes(b) for b in batches):
        # Not expected (the unit tests prove equality), but a bench must not time a wrong encoder.
        print("warning: encode_request differs from the reference on this data", file=sys.stderr)
    n_events = len(sample)
    n_spans = sum(len(b) for b in batches)
    per_event = 1e6 / n_events
    per_span = 1e6 / n_spans
    repeat = args.repeat
    results: dict[str, Any] = {"events": n_events, "spans": n_spans, "batch": args.batch}
    results["build_us"] = best_cpu(fresh_events, build_with(build_span), repeat) * per_event
    baseline = baseline_builder(args.baseline_ref)
    if baseline is not None:
        results["build_baseline_us"] = (
            best_cpu(fresh_events, build_with(baseline), repeat) * per_event
        )
    results["encode_us"] = best_cpu(fresh_batches, encode_with(encode_request), repeat) * per_span
    results["encode_reference_us"] = (
        best_cpu(fresh_batches, encode_with(reference_bytes), repeat) * per_span
    )
    results["total_us"] = results["build_us"] + results["encode_us"]

    def direct(evs: list[Event]) -> object:
        encoded = [s for r, e, k in evs if (s := encode_request_span(r, e, k)) is not None]
        size = args.batch
        return [frame_request(encoded[i : i + size]) for i in range(0, len(encoded), size)]

    results["direct_us"] = best_cpu(fresh_events, direct, repeat) * per_event
    if baseline is not None:
        results["total_baseline_us"] = results["build_baseline_us"] + results["encode_reference_us"]

    if args.json:
        print(orjson.dumps(results).decode())
        return 0
    print(
        f"{results['events']} events, {results['spans']} spans, batches of {args.batch}"
        f" (CPU µs, best of {args.repeat})"
    )
    before = results.get("build_baseline_us")
    label = f"before ({args.baseline_ref})"
    print(
        f"  build_span   now {results['build_us']:6.2f} µs/event"
        + (f"   {label} {before:6.2f}" if before is not None else "")
    )
    print(
        f"  encode       now {results['encode_us']:6.2f} µs/span "
        f"   reference (protobuf objects) {results['encode_reference_us']:6.2f}"
    )
    total_before = results.get("total_baseline_us")
    print(
        f"  total        now {results['total_us']:6.2f} µs/span "
        + (f"   before {total_before:6.2f}" if total_before is not None else "")
    )
    print(
        f"  direct       {results['direct_us']:6.2f} µs/event (what the worker runs: request ->"
        " span bytes, framed per batch)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
