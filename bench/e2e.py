"""One-run end-to-end benchmark (``make bench``; ``--json`` for machine output).

On the same pre-produced topic data (a realistic mix of every input format
from pipeline.dev.synth, GeoIP on the full-size GeoLite2-City database):

  a. raw ceiling      aiokafka getmany + orjson.loads, no consumer group
  b. worker, no sinks stock Faust (stream mode) and grayscope's batch path
  c. full worker      -> osmem store + OTLP receiver (real processes)
  c'. full worker     -> an instantly-acknowledging bulk endpoint + OTLP receiver
  d. store ceiling    bulk of the same documents straight into osmem
  e. latency          produce at a fixed rate; Kafka record time -> bulk acknowledged

Each worker is a real ``grayscope worker`` subprocess; throughput is measured
from its /metrics between the first and the last consumed message; peak RSS
is the process's VmHWM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import native  # noqa: E402
from pipeline.dev.embedded.broker import EmbeddedBroker, create_topics  # noqa: E402
from pipeline.dev.embedded.store import EmbeddedStore  # noqa: E402
from pipeline.dev.stack.process import free_port  # noqa: E402
from pipeline.dev.synth import generate  # noqa: E402
from pipeline.telemetry import sample_sums  # noqa: E402

PARTITIONS = 4


async def produce(bootstrap: str, topic: str, values: list[bytes], rate: float = 0) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=1 << 20, acks=1
    )
    await producer.start()
    try:
        pending = []
        started = time.monotonic()
        for i, value in enumerate(values):
            if rate:
                due = started + i / rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            pending.append(await producer.send(topic, value))
            if len(pending) >= 2000:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def raw_ceiling(bootstrap: str, topic: str, n: int) -> float:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        loads = orjson.loads
        seen = 0
        started = time.perf_counter()
        while seen < n:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for records in batch.values():
                for record in records:
                    try:  # noqa: SIM105 - suppress() costs more in this loop
                        loads(record.value)
                    except orjson.JSONDecodeError:
                        pass
            seen += sum(len(r) for r in batch.values())
        return n / (time.perf_counter() - started)
    finally:
        await consumer.stop()


def metrics(port: int) -> dict[str, float]:
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    except OSError:
        return {}
    return sample_sums(body.decode())


def latency_quantiles(m: dict[str, float], name: str, qs: tuple[float, ...]) -> dict[str, float]:
    buckets = sorted(
        (float(k.split('le="', 1)[1].split('"', 1)[0].replace("+Inf", "inf")), v)
        for k, v in m.items()
        if k.startswith(name + "_bucket{")
    )
    total = m.get(name + "_count", 0.0)
    out = {}
    for q in qs:
        rank = q * total
        lower, seen = 0.0, 0.0
        for bound, cumulative in buckets:
            if cumulative >= rank and cumulative > seen:
                upper = bound if bound != float("inf") else lower
                out[f"p{round(q * 100)}"] = lower + (upper - lower) * (rank - seen) / (
                    cumulative - seen
                )
                break
            lower, seen = bound, cumulative
    return out


def start_worker(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    full = {
        **os.environ,
        "GRAYSCOPE_WEB_PORT": str(port),
        "GRAYSCOPE_WEB_HOST": "127.0.0.1",
        "GRAYSCOPE_KAFKA_SESSION_TIMEOUT": "2",
        "GRAYSCOPE_ES_MODE": "index",
        "GRAYSCOPE_LOG_LEVEL": "warning",
        "GRAYSCOPE_CONSUMER_GROUP": "bench-" + uuid.uuid4().hex[:8],
        **env,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.commands.main", "worker"],
        env=full,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    return proc, port


def cpu_seconds(pid: int) -> dict[int, float]:
    """CPU time (user + system) of each of the process's threads, by thread id."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def cpu_per_event(pid: int, before: dict[int, float], events: float) -> dict[str, float]:
    """CPU µs per event since ``before``: the whole process, its main thread, the rest.

    Steadier than events/s on a shared VM whose speed drifts: it does not count
    the time the worker waited for a core. The main thread runs the event loop
    (enrichment, sinks, Faust); the others are mostly aiokafka's consumer thread.
    """
    after = cpu_seconds(pid)
    used = {tid: seconds - before.get(tid, 0.0) for tid, seconds in after.items()}
    per_event = 1e6 / max(events, 1.0)
    total = sum(used.values())
    main = used.get(pid, 0.0)
    return {
        "cpu_us_per_event": round(total * per_event, 2),
        "main_thread_cpu_us_per_event": round(main * per_event, 2),
        "other_threads_cpu_us_per_event": round((total - main) * per_event, 2),
    }


def host_cpu_ticks() -> tuple[int, int]:
    """(steal, total) CPU ticks of the whole machine, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def steal_percent(before: tuple[int, int]) -> float:
    """The share of the machine's CPU time the hypervisor took since ``before``.

    A VM's neighbours take cores away for seconds at a time (seen here: 13-28 %
    steal during a worker run): the worker then gets less than its one core,
    which lowers events/s but not CPU µs per event.
    """
    steal, total = host_cpu_ticks()
    return round(100 * (steal - before[0]) / max(total - before[1], 1), 1)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


# Rendering /metrics costs the worker a few ms of its one core: polling every
# 50 ms took ~3 % of the batch path's time (py-spy), so poll less often and
# interpolate when, inside the last interval, the count reached the target.
POLL_SECONDS = 0.2


def run_worker(env: dict[str, str], n: int, log: Path, timeout: float) -> dict[str, Any]:
    proc, port = start_worker(env, log)
    try:
        deadline = time.monotonic() + timeout
        first = None
        cpu_before: dict[int, float] = {}
        host_before = (0, 0)
        cpu: dict[str, float] = {}
        previous = (time.perf_counter(), 0.0)
        m: dict[str, float] = {}
        end = previous[0]
        while time.monotonic() < deadline:
            m = metrics(port)
            now, done = time.perf_counter(), m.get("grayscope_messages_consumed_total", 0.0)
            if done and first is None:
                first = (now, done)
                cpu_before = cpu_seconds(proc.pid)
                host_before = host_cpu_ticks()
            if done >= n:
                cpu = cpu_per_event(proc.pid, cpu_before, done - (first[1] if first else 0.0))
                cpu["host_steal_pct"] = steal_percent(host_before)
                before, count = previous
                end = before + (now - before) * (n - count) / max(done - count, 1.0)
                end = max(end, first[0] if first else end)
                break
            previous = (now, done)
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited: see {log}")
            time.sleep(POLL_SECONDS)
        if first is None:
            raise RuntimeError(f"worker consumed nothing in {timeout}s: see {log}")
        consumed = m.get("grayscope_messages_consumed_total", 0.0)
        rate = (min(consumed, n) - first[1]) / max(end - first[0], 1e-9)
        return {
            "events_per_s": round(rate),
            "consumed": int(consumed),
            "indexed": int(m.get("grayscope_documents_indexed_total", 0)),
            "dead_lettered": int(m.get("grayscope_dead_lettered_total", 0)),
            "spans_exported": int(m.get("grayscope_spans_exported_total", 0)),
            "spans_dropped": int(m.get("grayscope_spans_dropped_total", 0)),
            "geoip_hit_ratio": round(
                m.get("grayscope_geoip_cache_hits_total", 0)
                / max(
                    1.0,
                    m.get("grayscope_geoip_cache_hits_total", 0)
                    + m.get("grayscope_geoip_cache_misses_total", 0),
                ),
                3,
            ),
            **cpu,
            "peak_rss_mb": round(peak_rss_mb(proc.pid), 1),
            "metrics": m,
        }
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def best_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest of one path's runs; every run's rate and CPU per event are kept
    under ``runs`` and ``runs_cpu_us_per_event``, the highest RSS of them all."""
    best = dict(max(runs, key=lambda r: r["events_per_s"]))
    best["runs"] = [r["events_per_s"] for r in runs]
    best["runs_cpu_us_per_event"] = [r.get("cpu_us_per_event") for r in runs]
    best["runs_host_steal_pct"] = [r.get("host_steal_pct") for r in runs]
    best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    return best


def store_ceiling(store: EmbeddedStore, values: list[bytes], n: int) -> float:
    from pipeline.core.enrich import EnrichContext
    from pipeline.core.process import Enriched, process

    ctx = EnrichContext()
    docs = [r.document for r in (process(v, ctx) for v in values[:n]) if isinstance(r, Enriched)]
    bodies = []
    for start in range(0, len(docs), 1000):
        lines = []
        for i, doc in enumerate(docs[start : start + 1000], start):
            lines.append(b'{"index":{"_index":"grayscope-access-ceiling","_id":"%d"}}' % i)
            lines.append(orjson.dumps(doc))
        bodies.append(b"\n".join(lines) + b"\n")
    started = time.perf_counter()
    for body in bodies:
        req = urllib.request.Request(
            store.url + "/_bulk", data=body, headers={"Content-Type": "application/x-ndjson"}
        )
        urllib.request.urlopen(req, timeout=120).read()
    return len(docs) / (time.perf_counter() - started)


def start_null_store() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "null_store.py"), str(port)],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    proc.stdout.readline()
    time.sleep(0.3)
    return proc, f"http://127.0.0.1:{port}"


def start_receiver() -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    proc = subprocess.Popen(
        # --keep 0: count the spans, keep none (a collector stand-in, not a store).
        [sys.executable, "-m", "pipeline.dev.embedded.otlp_receiver", "--keep", "0"],
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    info = json.loads(proc.stdout.readline())
    return proc, info


def interpreter() -> dict[str, str]:
    """Which Python ran the workers (their ``sys.executable`` is this one's).

    Its build moves the figures: a static interpreter built with PGO and LTO
    (Debian's, the python:3.11 images') ran the enrichment core ~15 % faster than
    a pyenv build without them that calls into a shared libpython (bench/README.md,
    "Session 5").
    """
    maps = Path("/proc/self/maps")
    shared = "libpython" in maps.read_text() if maps.exists() else None
    built = [m for m in native.NATIVE_MODULES if native.compiled_path(m) is not None]
    return {
        "executable": os.path.realpath(sys.executable),
        "version": sys.version.split()[0],
        "libpython": "unknown" if shared is None else "shared" if shared else "static",
        # The workers import the mypyc-built core when it is built (pipeline/native.py).
        "compiled_core": f"{len(built)}/{len(native.NATIVE_MODULES)}",
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"events": args.events, "python": interpreter()}
    values = list(generate(args.events, seed=42))
    results["avg_line_bytes"] = round(sum(map(len, values)) / len(values))
    broker = EmbeddedBroker.start(log_path=workdir / "tansu.log")
    store = EmbeddedStore.start(log_path=workdir / "osmem.log")
    receiver, endpoints = start_receiver()
    null_store, null_url = start_null_store()
    try:
        topic = "bench-" + uuid.uuid4().hex[:8]
        await create_topics(broker.bootstrap, [topic], PARTITIONS)
        t = time.perf_counter()
        await produce(broker.bootstrap, topic, values)
        results["produce_events_per_s"] = round(args.events / (time.perf_counter() - t))
        base = {"GRAYSCOPE_KAFKA_BROKERS": broker.bootstrap, "GRAYSCOPE_INPUT_TOPICS": topic}
        no_sinks = base | {"GRAYSCOPE_ES_URL": "", "GRAYSCOPE_OTLP_ENDPOINT": ""}
        full = base | {"GRAYSCOPE_OTLP_ENDPOINT": endpoints["grpc_endpoint"]}
        paths = {
            "b_stock_faust": no_sinks | {"GRAYSCOPE_CONSUMER_MODE": "stream"},
            "b_batch_path": no_sinks | {"GRAYSCOPE_CONSUMER_MODE": "batch"},
            "c_full_null_store": full | {"GRAYSCOPE_ES_URL": null_url},
        }
        log = workdir / "workers.log"
        # Rounds, not one path's repeats back to back: this VM's speed drifts by
        # 15-20 % within minutes, so each round measures the raw ceiling and every
        # path in the same window, and a run's ratio is taken to its own round's ceiling.
        ceilings: list[int] = []
        runs: dict[str, list[dict[str, Any]]] = {key: [] for key in paths}
        for _ in range(max(1, args.repeat)):
            ceiling = round(await raw_ceiling(broker.bootstrap, topic, args.events))
            ceilings.append(ceiling)
            for key, env in paths.items():
                run = run_worker(env, args.events, log, args.timeout)
                run["vs_raw"] = round(run["events_per_s"] / ceiling, 3)
                runs[key].append(run)
        results["a_raw_ceiling"] = max(ceilings)
        results["a_raw_ceiling_runs"] = ceilings
        for key, key_runs in runs.items():
            results[key] = best_of(key_runs)
        store_n = min(args.events, args.store_events)
        store_topic = topic + "-store"
        await create_topics(broker.bootstrap, [store_topic], PARTITIONS)
        await produce(broker.bootstrap, store_topic, values[:store_n])
        results["c_full_osmem"] = run_worker(
            full | {"GRAYSCOPE_ES_URL": store.url, "GRAYSCOPE_INPUT_TOPICS": store_topic},
            store_n,
            log,
            args.timeout,
        )
        results["d_store_ceiling"] = round(store_ceiling(store, values, min(store_n, 10_000)))
        # e. latency at a fixed offered load, against the instantly-acknowledging endpoint
        # (osmem cannot absorb this rate, see d) with spans exported.
        lat_topic = topic + "-latency"
        await create_topics(broker.bootstrap, [lat_topic], PARTITIONS)
        proc, port = start_worker(
            full
            | {
                "GRAYSCOPE_ES_URL": null_url,
                "GRAYSCOPE_INPUT_TOPICS": lat_topic,
                "GRAYSCOPE_BATCH_TIMEOUT": "0.05",
            },
            log,
        )
        try:
            while not metrics(port):
                time.sleep(0.1)
            time.sleep(4)  # group join
            lat_n = int(args.rate * args.latency_seconds)
            await produce(broker.bootstrap, lat_topic, values[:lat_n], rate=args.rate)
            deadline = time.monotonic() + 30
            m = metrics(port)
            while (
                m.get("grayscope_messages_consumed_total", 0) < lat_n
                and time.monotonic() < deadline
            ):
                time.sleep(0.2)
                m = metrics(port)
            results["e_latency"] = {
                "offered_events_per_s": args.rate,
                "events": lat_n,
                **{
                    k: round(v * 1000, 1)
                    for k, v in latency_quantiles(
                        m, "grayscope_delivery_latency_seconds", (0.5, 0.99)
                    ).items()
                },
                "unit": "ms",
                "peak_rss_mb": round(peak_rss_mb(proc.pid), 1),
            }
        finally:
            proc.terminate()
            proc.wait(30)
    finally:
        for p in (receiver, null_store):
            p.terminate()
            p.wait(10)
        store.stop()
        broker.stop()
    for key in list(results):
        if isinstance(results[key], dict):
            results[key].pop("metrics", None)
    return results


def table(results: dict[str, Any]) -> str:
    ceiling = results["a_raw_ceiling"]
    ceilings = results.get("a_raw_ceiling_runs", [])
    rows: list[tuple[str, int, float, str]] = [
        (
            "a. raw ceiling: aiokafka getmany + orjson",
            ceiling,
            1.0,
            "runs " + "/".join(f"{rate:,}" for rate in ceilings) if len(ceilings) > 1 else "",
        )
    ]
    for key, label in (
        ("b_stock_faust", "b. worker, no sinks, stock Faust agent"),
        ("b_batch_path", "b. worker, no sinks, batch path"),
        ("c_full_null_store", "c. full worker -> instant bulk ack + OTLP"),
        ("c_full_osmem", "c. full worker -> osmem + OTLP"),
    ):
        r = results[key]
        note = f"RSS {r['peak_rss_mb']} MB"
        if "cpu_us_per_event" in r:
            note += (
                f", CPU {r['cpu_us_per_event']} µs/event"
                f" (main {r['main_thread_cpu_us_per_event']})"
            )
        if len(r.get("runs", ())) > 1:
            note += ", runs " + "/".join(f"{rate:,}" for rate in r["runs"])
            steal = r.get("runs_host_steal_pct") or []
            if any(v is not None for v in steal):
                note += " (host steal " + "/".join(f"{v}%" for v in steal) + ")"
        elif r.get("host_steal_pct") is not None:
            note += f", host steal {r['host_steal_pct']}%"
        if key.startswith("c_"):
            note += f", spans exported {r['spans_exported']:,} dropped {r['spans_dropped']:,}"
        # A round's worker runs are compared with that round's raw ceiling.
        rows.append((label, r["events_per_s"], r.get("vs_raw", r["events_per_s"] / ceiling), note))
    store = results["d_store_ceiling"]
    rows.append(("d. osmem store ceiling (direct bulk)", store, store / ceiling, ""))
    out = [f"{'path':48} {'events/s':>10} {'vs raw':>7}  notes"]
    for label, rate, ratio, note in rows:
        out.append(f"{label:48} {rate:>10,} {ratio:>7.2f}  {note}")
    stock, batch = results["b_stock_faust"]["events_per_s"], results["b_batch_path"]["events_per_s"]
    out.append(f"batch path vs stock Faust: {batch / max(stock, 1):.1f}x")
    full = results["c_full_null_store"]
    if "cpu_us_per_event" in full:
        out.append(
            f"full path CPU: {full['cpu_us_per_event']} µs/event "
            f"(= {1e6 / full['cpu_us_per_event']:,.0f} events/s on a whole core); "
            f"30,000 events/s on one core needs <= {1e6 / 30_000:.1f} µs/event"
        )
    lat = results["e_latency"]
    out.append(
        f"e. latency at {lat['offered_events_per_s']:,} events/s "
        f"(Kafka record time -> bulk acked): p50 {lat.get('p50')} ms, "
        f"p99 {lat.get('p99')} ms, worker peak RSS {lat['peak_rss_mb']} MB"
    )
    out.append(f"GeoIP cache hit ratio (batch path): {results['b_batch_path']['geoip_hit_ratio']}")
    py = results["python"]
    out.append(
        f"Python {py['version']} {py['executable']} (libpython {py['libpython']}), "
        f"compiled core modules {py['compiled_core']}"
    )
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--store-events", type=int, default=20_000, help="events for the osmem run")
    parser.add_argument("--rate", type=float, default=5000, help="offered load for the latency run")
    parser.add_argument("--latency-seconds", type=float, default=20)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds of (raw ceiling, b, b, c'), interleaved so that drift hits every path "
        "alike; the fastest run of each counts",
    )
    parser.add_argument("--workdir", default="/tmp/grayscope-bench")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    print(json.dumps(results, indent=2) if args.json else table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
