"""Where the worker alone spends its CPU, by native symbol: ``perf`` on a running worker.

py-spy (sessions 10-14) samples Python stacks and guesses the native frames under
them; in Debian's static interpreter it names most of libpython's internals after
the nearest exported symbol (``Py_DECREF`` took 11-35 % of its samples). ``perf``
reads the symbols the interpreter, the compiled core (mypyc), orjson, libc and the
kernel really have, so its shares add up to the CPU the worker used. It cannot name
interpreted Python functions (Python 3.11 has no perf trampoline): their bytecode
shows as ``_PyEval_EvalFrameDefault``.

This runs the worker's full path as ``make bench``'s ``c_full_null_store`` round does
(real Kafka, the instantly acknowledging bulk endpoint, the counting OTLP receiver),
waits until ``--warm-up`` of the events are consumed (a third: the heap, memos and
caches grown to their steady size; before, page faults show),
records ``perf record -F 999`` of the worker process for ``--seconds``, and prints the
worker's CPU µs per event over that window split by shared object and by symbol::

    .venv/bin/python -m bench.profile_worker --events 1500000 --seconds 15
    .venv/bin/python -m bench.profile_worker 'GRAYSCOPE_KAFKA_CHECK_CRCS=false'

Needs ``perf`` (Debian: linux-perf) and the right to profile the worker (root, or
``kernel.perf_event_paranoid`` <= 1).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import e2e  # noqa: E402
from pipeline.dev.synth import generate  # noqa: E402

CONSUMED = "grayscope_messages_consumed_total"


def consumed(port: int) -> float:
    return e2e.metrics(port).get(CONSUMED, 0.0)


def wait_for(port: int, proc: subprocess.Popen[bytes], n: float, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = consumed(port)
        if done >= n:
            return done
        if proc.poll() is not None:
            raise RuntimeError("worker exited")
        time.sleep(0.2)
    raise RuntimeError(f"worker consumed fewer than {n:.0f} events in {timeout:.0f} s")


def perf_report(data: Path) -> list[tuple[float, str, str]]:
    """(share in %, shared object, symbol) of every sampled symbol, largest first."""
    out = subprocess.run(
        ["perf", "report", "-i", str(data), "--no-children", "--sort", "dso,sym", "--stdio"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split()
        if not parts or parts[0].startswith("#") or not parts[0].endswith("%"):
            continue
        # "  6.77%  python3.11  [.] _PyEval_EvalFrameDefault"
        share, dso = float(parts[0][:-1]), parts[1]
        symbol = " ".join(parts[3:]) if len(parts) > 3 else parts[-1]
        rows.append((share, Path(dso).name, symbol))
    return rows


def dso_kind(dso: str) -> str:
    """A shared object's name, shortened to what it is."""
    if dso.startswith("core_native__mypyc"):
        return "compiled core (mypyc)"
    if dso.startswith("python3"):
        return "interpreter (libpython)"
    if dso.startswith("libc"):
        return "libc (malloc, memcpy)"
    if dso == "[kernel.kallsyms]":
        return "kernel"
    return dso.split(".cpython")[0]


async def profile(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="grayscope-profile-"))
    values = list(generate(args.events, seed=42))
    services = e2e.Services.start(workdir / "services")
    receiver, endpoints = e2e.start_receiver()
    null_store, null_url = e2e.start_null_store()
    try:
        bootstrap = services.kafka.bootstrap
        await e2e.wait_for_group_coordinator(bootstrap)
        topic = "profile-" + uuid.uuid4().hex[:8]
        await e2e.create_topics(bootstrap, [topic], e2e.PARTITIONS)
        await e2e.produce(bootstrap, topic, values)
        env = {
            "GRAYSCOPE_KAFKA_BROKERS": bootstrap,
            "GRAYSCOPE_INPUT_TOPICS": topic,
            "GRAYSCOPE_OTLP_ENDPOINT": endpoints["grpc_endpoint"],
            "GRAYSCOPE_ES_URL": null_url,
        }
        for setting in args.settings:
            env |= dict(item.split("=", 1) for item in setting.split(",") if item)
        proc, port = e2e.start_worker(env, workdir / "worker.log")
        try:
            wait_for(port, proc, args.events * args.warm_up, args.timeout)
            data = workdir / "perf.data"
            before_events = consumed(port)
            before_cpu = sum(e2e.cpu_seconds(proc.pid).values())
            record = ["perf", "record", "-q", "-F", "999", "-p", str(proc.pid), "-o", str(data)]
            if args.call_graph:
                record += ["--call-graph", args.call_graph]
            subprocess.run(
                [*record, "--", "sleep", str(args.seconds)],
                check=True,
                capture_output=True,
            )
            events = consumed(port) - before_events
            cpu = sum(e2e.cpu_seconds(proc.pid).values()) - before_cpu
        finally:
            proc.terminate()
            proc.wait(30)
    finally:
        receiver.terminate()
        null_store.terminate()
        services.stop()
    if events < args.events / 10:
        raise SystemExit(f"only {events:.0f} events in the window: use more --events")
    us_per_event = cpu / events * 1e6
    rows = perf_report(data)
    print(
        f"{events:,.0f} events in {args.seconds:.0f} s: {events / args.seconds:,.0f} events/s, "
        f"worker CPU {us_per_event:.2f} µs per event (perf's samples are shares of it)"
    )
    by_dso: dict[str, float] = {}
    for share, dso, _ in rows:
        kind = dso_kind(dso)
        by_dso[kind] = by_dso.get(kind, 0.0) + share
    print("\nby shared object (µs per event):")
    for kind, share in sorted(by_dso.items(), key=lambda item: -item[1])[:12]:
        print(f"  {us_per_event * share / 100:6.2f}  {kind}")
    print(f"\ntop {args.top} symbols (µs per event):")
    for share, dso, symbol in rows[: args.top]:
        print(f"  {us_per_event * share / 100:6.2f}  {symbol[:70]}  ({dso_kind(dso)})")
    if args.keep:
        print(f"\nperf data: {data}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("settings", nargs="*", help="KEY=VALUE,... for the worker's environment")
    parser.add_argument("--events", type=int, default=1_500_000)
    parser.add_argument(
        "--warm-up", type=float, default=1 / 3, help="share of the events consumed before perf"
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="how long perf records")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--keep", action="store_true", help="keep the perf data")
    parser.add_argument(
        "--call-graph",
        help="perf record's --call-graph (dwarf: Debian's interpreter has no frame pointers);"
        " with --keep, `perf report -i DATA --no-children -S SYMBOL -G` shows a symbol's callers",
    )
    args = parser.parse_args()
    if shutil.which("perf") is None:
        print("needs perf (Debian: linux-perf)", file=sys.stderr)
        return 2
    paranoid = int(Path("/proc/sys/kernel/perf_event_paranoid").read_text())
    if os.geteuid() != 0 and paranoid > 1:
        print("needs root or kernel.perf_event_paranoid <= 1", file=sys.stderr)
        return 2
    asyncio.run(profile(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
