"""Worker settings side by side on the real stack, in interleaved rounds.

``make bench`` measures the worker once per path with the defaults; choosing a
default (batch size, batches in flight, OTLP batch) needs several settings in the
same window, on one warm set of services, because this VM's speed and Jaeger's
CPU per span drift within minutes. This starts Kafka, OpenSearch and Jaeger once
(``bench.real_stack.Services``), produces the synth stream once, warms the store
up (``warm_store``), then, each round, measures its ceiling at the worker's default
shape (bulks of 5,000, four at once: ``GRAYSCOPE_BATCH_SIZE`` x
``GRAYSCOPE_BATCH_CONCURRENCY``) and runs one worker per setting into the store. One
JSON line per run: events/s, its ratio to the round's ceiling, the CPU µs per event of
the worker, OpenSearch (its JIT apart), Jaeger and Kafka, the cores busy, and the spans
exported and dropped::

    .venv/bin/python -m bench.worker_settings --rounds 3 \\
        '' 'GRAYSCOPE_BATCH_SIZE=1000' 'GRAYSCOPE_BATCH_CONCURRENCY=2'

Each setting is a comma list of KEY=VALUE ('' = the defaults). ``--store-cpus 1``
(the default on a box with two or more CPUs) puts OpenSearch on that CPU and
everything else on the others, as ``make bench``'s ``store_pinned`` run does;
``--store null`` uses the instantly acknowledging bulk endpoint and the counting
OTLP receiver instead of OpenSearch and Jaeger (the worker alone; nothing pinned).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import e2e  # noqa: E402
from bench.real_stack import (  # noqa: E402
    Services,
    bulk_load,
    default_store_cpus,
    enriched_bulk_bodies,
    parse_cpus,
    warm_store,
)
from pipeline.config import Settings  # noqa: E402
from pipeline.dev.synth import generate  # noqa: E402

# The worker's default shape: documents per bulk, bulks at once.
BULK: int = Settings.model_fields["batch_size"].default
CONNECTIONS: int = Settings.model_fields["batch_concurrency"].default
CEILING_KEY = f"ceiling_{BULK}x{CONNECTIONS}"


async def ceiling_at_worker_shape(services: Services, bodies: list[bytes], events: int) -> int:
    """Docs/s of ``bodies`` bulk-loaded at the worker's shape into an empty data stream."""
    services.reset_data_stream()
    seconds, _ = await bulk_load(services.opensearch.url, bodies, CONNECTIONS)
    return round(events / seconds)


def parse_setting(text: str) -> dict[str, str]:
    """'K=V,K2=V2' -> {K: V, K2: V2}; '' -> {} (the defaults)."""
    pairs = [item.split("=", 1) for item in text.split(",") if item]
    return {key: value for key, value in pairs}


async def run(args: argparse.Namespace) -> None:
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    services = Services.start(workdir / "services")
    helpers: list[Any] = []
    try:
        real = args.store == "opensearch"
        if args.store_cpus and real:
            # Without the store nothing needs a core of its own: pinned, the worker, the
            # counting receiver and Kafka would share one.
            services.pin_store(args.store_cpus)
        values = list(generate(args.events, seed=42))
        bootstrap = services.kafka.bootstrap
        await e2e.wait_for_group_coordinator(bootstrap)
        topic = "settings-" + uuid.uuid4().hex[:8]
        await e2e.create_topics(bootstrap, [topic], e2e.PARTITIONS)
        await e2e.produce(bootstrap, topic, values)
        env = services.worker_env(topic)
        if real:
            await services.install_templates()
            _, bodies = enriched_bulk_bodies(values, topic, e2e.PARTITIONS, [BULK])
            warm = await warm_store(services, bodies[BULK], CONNECTIONS)
            ceiling = await ceiling_at_worker_shape(services, bodies[BULK], args.events)
            print(json.dumps({"warm_up": warm, CEILING_KEY: ceiling}))
        else:
            receiver, endpoints = e2e.start_receiver()
            null_store, null_url = e2e.start_null_store()
            helpers += [receiver, null_store]
            env |= {
                "GRAYSCOPE_ES_URL": null_url,
                "GRAYSCOPE_ES_MODE": "index",
                "GRAYSCOPE_OTLP_ENDPOINT": endpoints["grpc_endpoint"],
            }
        for round_number in range(1, args.rounds + 1):
            round_ceiling = None
            if real:
                # The store's cost per document drifts between runs minutes apart (34-54
                # CPU µs, session 15): each round's runs are held to that round's ceiling.
                round_ceiling = await ceiling_at_worker_shape(services, bodies[BULK], args.events)
                print(json.dumps({"round": round_number, CEILING_KEY: round_ceiling}))
            for text in args.settings:
                if real:
                    services.reset_data_stream()
                result = e2e.run_worker(
                    env | parse_setting(text),
                    args.events,
                    workdir / "workers.log",
                    args.timeout,
                    progress=e2e.DELIVERED,
                    watch=services.cpu_clocks(),
                    aside=services.jit_clock(),
                )
                stack = result["stack_cpu"]
                line = {
                    "round": round_number,
                    "setting": text,
                    "events_per_s": result["events_per_s"],
                    "ratio": (
                        round(result["events_per_s"] / round_ceiling, 3) if round_ceiling else None
                    ),
                    "worker_cpu_us": result["cpu_us_per_event"],
                    **{f"{k}_cpu_us": v for k, v in stack["cpu_us_per_event"].items()},
                    "opensearch_jit_cpu_us": stack["aside_us_per_event"].get("opensearch_jit"),
                    "cores_busy": stack["box_busy_cores"],
                    "spans_exported": result["spans_exported"],
                    "spans_dropped": result["spans_dropped"],
                    "stored": result["indexed"],
                    "drop_reasons": {
                        k: v for k, v in result["metrics"].items() if "spans_dropped" in k and v
                    },
                }
                print(json.dumps(line), flush=True)
    finally:
        for proc in helpers:
            proc.terminate()
            proc.wait(10)
        services.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("settings", nargs="+", help="comma lists of KEY=VALUE ('' = defaults)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--store", choices=("opensearch", "null"), default="opensearch")
    parser.add_argument(
        "--store-cpus",
        type=parse_cpus,
        default=default_store_cpus(),
        help="OpenSearch on these CPUs only, the rest on the others ('none': shared)",
    )
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--workdir", default="/tmp/grayscope-bench-settings")
    asyncio.run(run(parser.parse_args()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
