"""What the request metrics cost per event, next to the core they ride on.

The same synthetic batches (pipeline.dev.synth, 1,000 messages each, GeoIP on
the bundled database when present) go through ``process_batch`` (the compiled
core when built) and ``RequestMetrics.add_batch`` in alternating rounds; each
is timed with the process CPU clock and the fastest round counts, so a busy
machine inflates both alike. ``make bench`` (bench/e2e.py) measures the whole
worker, whose run-to-run spread on a shared 2-core VM is far larger than this
cost.

    .venv/bin/python bench/request_metrics.py [--events 100000] [--rounds 7] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import Settings, enrich_context
from pipeline.core.process import process_batch
from pipeline.dev.synth import PATH_RULES, generate
from pipeline.geoip import GeoIPResolver
from pipeline.metrics.requests import RequestMetrics
from pipeline.native import loaded_native

BATCH = 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    settings = Settings(path_rules=orjson.dumps(list(PATH_RULES)).decode())
    geoip = GeoIPResolver.from_settings(settings.geoip) if settings.geoip_city_db else None
    ctx = enrich_context(settings, geoip)
    values = list(generate(args.events, seed=1))
    batches = [values[i : i + BATCH] for i in range(0, len(values), BATCH)]
    results = [process_batch(batch, ctx) for batch in batches]  # warm caches and memos
    metrics = RequestMetrics()
    core_best = metrics_best = float("inf")
    for _ in range(args.rounds):
        started = time.process_time()
        for batch in batches:
            process_batch(batch, ctx)
        core_best = min(core_best, time.process_time() - started)
        started = time.process_time()
        for result in results:
            metrics.add_batch(result)
        metrics_best = min(metrics_best, time.process_time() - started)
    n = len(values)
    out = {
        "events": n,
        "compiled_core": len(loaded_native()) > 0,
        "core_us_per_event": round(core_best / n * 1e6, 3),
        "request_metrics_us_per_event": round(metrics_best / n * 1e6, 3),
        "share_of_core": round(metrics_best / core_best, 4),
        "series": {"requests": len(metrics.requests), "histograms": len(metrics.durations)},
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"process_batch {out['core_us_per_event']} µs/event "
            f"(compiled: {out['compiled_core']}); request metrics "
            f"{out['request_metrics_us_per_event']} µs/event = "
            f"{out['share_of_core']:.1%} of the core; series {out['series']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
