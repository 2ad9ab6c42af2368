"""The live A/A rollout of issue 17, on a real broker and the real worker.

A healthy canary (synthetic traffic, canary identical to stable,
``grayscope produce --synthetic --canary-share 0.5``) judged live by a
``grayscope worker`` at the default alpha with 2 s windows re-checked every
2 s, seven path groups, ``--seconds`` of traffic at ``--rate`` events/s, on
Apache Kafka (``make services``). The store is the instantly-acknowledging bulk
endpoint (the verdicts, not the store, are under test). Every verdict the
worker published is read back from the verdict topic:

    .venv/bin/python -m bench.canary_live                 # 90 s at 5,000 events/s
    .venv/bin/python -m bench.canary_live --regression    # the demo's regression

Prints one JSON object: judged (path group, window) pairs, verdict records,
those that said ``rollback``, and the decisions per path group.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson

from bench.e2e import metrics, start_null_store, start_worker
from pipeline.canary.records import Decision, Verdict
from pipeline.config import Settings, StackSettings
from pipeline.dev.stack.kafka import (
    KafkaNode,
    create_topics,
    kafka_lib,
    read_topic,
    wait_for_group_coordinator,
)
from pipeline.dev.synth import PATH_RULES


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    (workdir / "kafka").mkdir(parents=True)
    kafka = KafkaNode(
        data_dir=workdir / "kafka",
        lib=kafka_lib(Path(StackSettings.model_validate({}).cache_dir)),
    ).start()
    null_store, null_url = start_null_store()
    verdict_topic = "verdicts-" + uuid.uuid4().hex[:8]
    topic = "aa-" + uuid.uuid4().hex[:8]
    try:
        await wait_for_group_coordinator(kafka.bootstrap)
        await create_topics(kafka.bootstrap, [topic], 4)
        proc, port = start_worker(
            {
                "GRAYSCOPE_KAFKA_BROKERS": kafka.bootstrap,
                "GRAYSCOPE_INPUT_TOPICS": topic,
                "GRAYSCOPE_ES_URL": null_url,
                "GRAYSCOPE_OTLP_ENDPOINT": "",
                "GRAYSCOPE_CANARY_WINDOW": str(args.window),
                "GRAYSCOPE_CANARY_INTERVAL": str(args.interval),
                "GRAYSCOPE_CANARY_TOPIC": verdict_topic,
                "GRAYSCOPE_PATH_RULES": orjson.dumps(list(PATH_RULES)).decode(),
                "GRAYSCOPE_DATA_DIR": str(workdir / "worker-data"),
                "GRAYSCOPE_BATCH_TIMEOUT": "0.05",
            },
            workdir / "worker.log",
        )
        try:
            while not metrics(port):
                if proc.poll() is not None:
                    raise RuntimeError(f"worker exited: see {workdir / 'worker.log'}")
                time.sleep(0.2)
            time.sleep(8)  # group join
            produce = [
                str(Path(sys.executable).with_name("grayscope")),
                "produce",
                "--synthetic",
                "--canary-share",
                str(args.canary_share),
                "--rate",
                str(args.rate),
                "--count",
                str(int(args.rate * args.seconds)),
                "--seed",
                str(args.seed),
                "--no-progress",
                *(["--regression", args.regression] if args.regression else []),
            ]
            env = os.environ | {
                "GRAYSCOPE_KAFKA_BROKERS": kafka.bootstrap,
                "GRAYSCOPE_INPUT_TOPICS": topic,
            }
            started = time.monotonic()
            subprocess.run(produce, env=env, check=True, stdout=subprocess.DEVNULL)
            produced_in = time.monotonic() - started
            # Let the worker catch up (a loaded box), then the last windows end and are
            # folded and judged a couple of intervals later.
            count = int(args.rate * args.seconds)
            deadline = time.monotonic() + 300
            while (
                metrics(port).get("grayscope_messages_consumed_total", 0) < count
                and time.monotonic() < deadline
            ):
                time.sleep(1)
            time.sleep(3 * args.window + 3 * args.interval)
            m = metrics(port)
        finally:
            proc.terminate()
            proc.wait(30)
        raw = [r.value for r in await read_topic(kafka.bootstrap, verdict_topic)]
        (workdir / "verdicts.ndjson").write_bytes(b"\n".join(raw) + b"\n")
        records = [Verdict.from_json(orjson.loads(value)) for value in raw]
    finally:
        null_store.terminate()
        kafka.stop()
    judged = {(r.path_group, r.window_start) for r in records}
    rollbacks = [r for r in records if r.decision is Decision.ROLLBACK]
    per_group: dict[str, Counter[str]] = defaultdict(Counter)
    for r in records:
        per_group[r.path_group][r.decision.value] += 1
    return {
        "rate": args.rate,
        "seconds": args.seconds,
        "produced_in_s": round(produced_in, 1),
        "consumed": int(m.get("grayscope_messages_consumed_total", 0)),
        "alpha": Settings.model_fields["canary_alpha"].default,
        "window_s": args.window,
        "interval_s": args.interval,
        "regression": args.regression or None,
        "judged_pairs": len(judged),
        "verdict_records": len(records),
        "rollback_records": len(rollbacks),
        "rollback_pairs": len({(r.path_group, r.window_start) for r in rollbacks}),
        "rollback_groups": sorted({r.path_group for r in rollbacks}),
        "decisions_per_group": {g: dict(c) for g, c in sorted(per_group.items())},
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=5000)
    parser.add_argument("--seconds", type=float, default=90)
    parser.add_argument("--window", type=int, default=2)
    parser.add_argument("--interval", type=float, default=2)
    parser.add_argument("--canary-share", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--regression", default="", help="grayscope produce --regression (default: none, A/A)"
    )
    parser.add_argument("--workdir", default="/tmp/grayscope-canary-live")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
