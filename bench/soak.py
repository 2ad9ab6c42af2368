"""Memory soak: a worker under a steady offered load, RSS sampled over time.

``python bench/soak.py --minutes 10 --rate 5000`` prints one line per sample
(elapsed, consumed, RSS MB) and a JSON summary: the worker's RSS must stay
flat (bounded caches and queues), not grow with the number of events.
The store is the instantly-acknowledging bulk endpoint (bench/null_store.py)
so the run measures the worker, not the test store.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.e2e import (  # noqa: E402
    metrics,
    produce,
    start_null_store,
    start_receiver,
    start_worker,
)
from pipeline.config import StackSettings  # noqa: E402
from pipeline.dev.stack.kafka import KafkaNode, create_topics, kafka_lib  # noqa: E402
from pipeline.dev.synth import generate  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate", type=float, default=5000)
    parser.add_argument("--sample-seconds", type=float, default=30)
    parser.add_argument("--workdir", default="/tmp/grayscope-soak")
    parser.add_argument(
        "--no-spans",
        action="store_true",
        help="no OTLP export (default: spans to a counting OTLP receiver, the full worker)",
    )
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # A real Apache Kafka broker (make services), fresh log dir each run.
    shutil.rmtree(workdir / "kafka", ignore_errors=True)
    (workdir / "kafka").mkdir()
    broker = KafkaNode(
        data_dir=workdir / "kafka",
        lib=kafka_lib(Path(StackSettings.model_validate({}).cache_dir)),
    ).start()
    null_store, null_url = start_null_store()
    receiver, endpoints = (None, {}) if args.no_spans else start_receiver()
    topic = "soak-" + uuid.uuid4().hex[:8]
    asyncio.run(create_topics(broker.bootstrap, [topic], 4))
    proc, port = start_worker(
        {
            "GRAYSCOPE_KAFKA_BROKERS": broker.bootstrap,
            "GRAYSCOPE_INPUT_TOPICS": topic,
            "GRAYSCOPE_ES_URL": null_url,
            "GRAYSCOPE_OTLP_ENDPOINT": endpoints.get("grpc_endpoint", ""),
        },
        workdir / "worker.log",
    )
    total = int(args.rate * args.minutes * 60)
    values = list(generate(200_000, seed=9))

    def feed() -> None:
        # Distinct-enough traffic: the 200k generated lines cycled.
        asyncio.run(
            produce(
                broker.bootstrap,
                topic,
                [values[i % len(values)] for i in range(total)],
                rate=args.rate,
            )
        )

    producer = threading.Thread(target=feed, daemon=True)
    samples = []
    try:
        while not metrics(port):
            time.sleep(0.2)
        started = time.monotonic()
        producer.start()
        while producer.is_alive() or time.monotonic() - started < args.minutes * 60:
            time.sleep(args.sample_seconds)
            m = metrics(port)
            sample = {
                "elapsed_s": round(time.monotonic() - started),
                "consumed": int(m.get("grayscope_messages_consumed_total", 0)),
                "rss_mb": round(rss_mb(proc.pid), 1),
                "spans_dropped": int(m.get("grayscope_spans_dropped_total", 0)),
            }
            samples.append(sample)
            print(sample, flush=True)
            if not producer.is_alive() and sample["consumed"] >= total:
                break
    finally:
        proc.terminate()
        proc.wait(30)
        null_store.terminate()
        if receiver is not None:
            receiver.terminate()
            receiver.wait(10)
        broker.stop()
    rss = [s["rss_mb"] for s in samples]
    half = len(rss) // 2 or 1
    print(
        json.dumps(
            {
                "events": total,
                "consumed": samples[-1]["consumed"] if samples else 0,
                "rate": args.rate,
                "spans": not args.no_spans,
                "spans_dropped": samples[-1]["spans_dropped"] if samples else 0,
                "rss_first_half_max_mb": max(rss[:half]),
                "rss_second_half_max_mb": max(rss[half:] or rss),
                "rss_max_mb": max(rss),
                "samples": len(samples),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
