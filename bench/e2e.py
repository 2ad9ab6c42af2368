"""One-run end-to-end benchmark (``make bench``; ``--json`` for machine output).

On the same pre-produced topic data (a realistic mix of every input format
from pipeline.dev.synth, GeoIP on the full-size GeoLite2-City database):

  a. raw ceiling      aiokafka getmany + orjson.loads, no consumer group
  b. worker, no sinks stock Faust (stream mode) and grayscope's batch path
  c. full worker      -> an instantly-acknowledging bulk endpoint + OTLP receiver
                      that only counts (the worker alone)
  real_stack          the full worker -> OpenSearch (data stream) + Jaeger, and the
                      same documents bulk-loaded straight into OpenSearch (its ceiling)
  e. latency          produce at a fixed rate; Kafka record time -> bulk acknowledged
  scaling             1 -> 2 workers on 4 partitions; GeoIP with ~10^6 clients

Apache Kafka, OpenSearch and Jaeger are the real ones (``make services``),
started here on free loopback ports.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.real_stack import (  # noqa: E402
    CpuMeter,
    Services,
    cpu_bound,
    default_store_cpus,
    enriched_bulk_bodies,
    machine_cpu_ticks,
    parse_cpus,
    stat_cpu_seconds,
    store_ceiling,
)
from pipeline import native  # noqa: E402
from pipeline.dev.stack.kafka import create_topics, wait_for_group_coordinator  # noqa: E402
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


async def produce_with_kcat(bootstrap: str, topic: str, values: list[bytes], workdir: Path) -> None:
    """Produce with librdkafka's kcat (Debian): several times aiokafka's rate for a
    fraction of its CPU, so a scaling run measures the workers, not the producer."""
    if any(b"\n" in value for value in values):
        raise ValueError("kcat -l splits on newlines: a value holds one")
    path = workdir / f"{topic}.lines"
    path.write_bytes(b"\n".join(values) + b"\n")
    proc = await asyncio.create_subprocess_exec(
        "kcat",
        "-P",
        "-b",
        bootstrap,
        "-t",
        topic,
        "-X",
        "linger.ms=5",
        "-X",
        "batch.num.messages=10000",
        "-l",
        str(path),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    path.unlink()
    if proc.returncode != 0:
        raise RuntimeError(f"kcat failed: {err.decode(errors='replace')[-500:]}")


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


def start_worker(
    env: dict[str, str], log: Path, root: Path = ROOT
) -> tuple[subprocess.Popen[bytes], int]:
    """A ``grayscope worker`` of the checkout at ``root`` (its own ``.venv``), with ``env``."""
    port = free_port()
    full = {
        **os.environ,
        "GRAYSCOPE_WEB_PORT": str(port),
        "GRAYSCOPE_WEB_HOST": "127.0.0.1",
        # Kafka's smallest allowed session (group.min.session.timeout.ms).
        "GRAYSCOPE_KAFKA_SESSION_TIMEOUT": "6",
        "GRAYSCOPE_ES_MODE": "index",
        "GRAYSCOPE_LOG_LEVEL": "warning",
        "GRAYSCOPE_CONSUMER_GROUP": "bench-" + uuid.uuid4().hex[:8],
        **env,
        **WORKER_ENV,
    }
    # The entry point, not a module path: it is the same in every checkout compared.
    command = (
        Path(sys.executable).with_name("grayscope")
        if root == ROOT
        else root / ".venv/bin/grayscope"
    )
    proc = subprocess.Popen(
        [str(command), "worker"],
        env=full,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        cwd=root,
    )
    return proc, port


def cpu_seconds(pid: int) -> dict[int, float]:
    """CPU time (user + system) of each of the process's threads, by thread id."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = stat_cpu_seconds((task / "stat").read_text())
        except OSError:
            continue  # the thread ended meanwhile
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
    fields = machine_cpu_ticks()
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


# Rendering /metrics costs the worker its one core for a while: with the request
# metrics (per path group, stage, version, status class, 20 latency buckets) one
# render took ~17 ms here, and polling at 5 Hz was 8.8 % of the worker's samples
# (py-spy); ~2 ms since the request metrics write their own text (bench/README.md,
# session 14). A production scrape every 15 s is ~0.1 % (now ~0.015 %); the bench
# polls once a second and interpolates when, inside the last interval, the count
# reached the target.
POLL_SECONDS = 1.0


#: ``--worker-env KEY=VALUE``: settings every worker of this run gets (tuning experiments).
WORKER_ENV: dict[str, str] = {}

CONSUMED = ("grayscope_messages_consumed_total",)
# Into a real store a run ends when every message is stored or dead-lettered.
DELIVERED = ("grayscope_documents_indexed_total", "grayscope_dead_lettered_total")


def run_worker(
    env: dict[str, str],
    n: int,
    log: Path,
    timeout: float,
    *,
    root: Path = ROOT,
    progress: tuple[str, ...] = CONSUMED,
    watch: dict[str, Callable[[], float]] | None = None,
    aside: dict[str, Callable[[], float]] | None = None,
) -> dict[str, Any]:
    """Run a worker until ``progress`` (summed metrics) reaches ``n``; its figures.

    ``watch``: CPU-seconds clocks of other processes (by name) whose CPU per event is
    measured over the same span (``stack_cpu``: the services the worker writes to);
    ``aside``: clocks of CPU already inside one of them (the store's JIT compiler).
    """
    proc, port = start_worker(env, log, root)
    meter = CpuMeter(watch or {}, aside)
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
            now, done = time.perf_counter(), sum(m.get(name, 0.0) for name in progress)
            if done and first is None:
                first = (now, done)
                cpu_before = cpu_seconds(proc.pid)
                host_before = host_cpu_ticks()
                meter.start()
            if done >= n:
                cpu = cpu_per_event(proc.pid, cpu_before, done - (first[1] if first else 0.0))
                stack_cpu = meter.stop(done - (first[1] if first else 0.0))
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
        done = sum(m.get(name, 0.0) for name in progress)
        consumed = m.get("grayscope_messages_consumed_total", 0.0)
        rate = (min(done, n) - first[1]) / max(end - first[0], 1e-9)
        return {
            "events_per_s": round(rate),
            "consumed": int(consumed),
            "indexed": int(m.get("grayscope_documents_indexed_total", 0)),
            "dead_lettered": int(m.get("grayscope_dead_lettered_total", 0)),
            "spans_exported": int(m.get("grayscope_spans_exported_total", 0)),
            "spans_dropped": int(m.get("grayscope_spans_dropped_total", 0)),
            "geoip_hit_ratio": geoip_hit_ratio(m),
            **cpu,
            **({"stack_cpu": stack_cpu} if watch and cpu else {}),
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
    results: dict[str, Any] = {"events": args.events, "python": interpreter(), "cpu": cpu_model()}
    values = list(generate(args.events, seed=42))
    results["avg_line_bytes"] = round(sum(map(len, values)) / len(values))
    services = Services.start(workdir / "services")
    receiver, endpoints = start_receiver()
    null_store, null_url = start_null_store()
    bootstrap = services.kafka.bootstrap
    try:
        # The first consumer group of a fresh cluster waits for __consumer_offsets.
        await wait_for_group_coordinator(bootstrap)
        topic = "bench-" + uuid.uuid4().hex[:8]
        await create_topics(bootstrap, [topic], PARTITIONS)
        t = time.perf_counter()
        await produce(bootstrap, topic, values)
        results["produce_events_per_s"] = round(args.events / (time.perf_counter() - t))
        base = {"GRAYSCOPE_KAFKA_BROKERS": bootstrap, "GRAYSCOPE_INPUT_TOPICS": topic}
        no_sinks = base | {"GRAYSCOPE_ES_URL": "", "GRAYSCOPE_OTLP_ENDPOINT": ""}
        # The worker alone: a store that acknowledges at once, spans to a receiver
        # that only counts them (the worker's own cost, no store or trace backend).
        full = base | {"GRAYSCOPE_OTLP_ENDPOINT": endpoints["grpc_endpoint"]}
        paths: dict[str, tuple[dict[str, str], Path]] = {
            "b_stock_faust": (no_sinks | {"GRAYSCOPE_CONSUMER_MODE": "stream"}, ROOT),
            "b_batch_path": (no_sinks | {"GRAYSCOPE_CONSUMER_MODE": "batch"}, ROOT),
            "c_full_null_store": (full | {"GRAYSCOPE_ES_URL": null_url}, ROOT),
        }
        if args.compare:
            # Another checkout's worker in the same rounds: before/after on one broker.
            other = Path(args.compare).resolve()
            paths["compare_b_batch_path"] = (paths["b_batch_path"][0], other)
            paths["compare_c_full_null_store"] = (paths["c_full_null_store"][0], other)
        log = workdir / "workers.log"
        # Rounds, not one path's repeats back to back: this VM's speed drifts by
        # 15-20 % within minutes, so each round measures the raw ceiling and every
        # path in the same window, and a run's ratio is taken to its own round's ceiling.
        if args.only_scaling:
            results["scaling"] = await scaling(services, null_url, endpoints, args, log)
            return results
        if not args.only_real_stack:
            ceilings: list[int] = []
            runs: dict[str, list[dict[str, Any]]] = {key: [] for key in paths}
            for _ in range(max(1, args.repeat)):
                ceiling = round(await raw_ceiling(bootstrap, topic, args.events))
                ceilings.append(ceiling)
                for key, (env, root) in paths.items():
                    run = run_worker(env, args.events, log, args.timeout, root=root)
                    run["vs_raw"] = round(run["events_per_s"] / ceiling, 3)
                    runs[key].append(run)
            results["a_raw_ceiling"] = max(ceilings)
            results["a_raw_ceiling_runs"] = ceilings
            for key, key_runs in runs.items():
                results[key] = best_of(key_runs)
            if args.compare:
                results["compare_root"] = str(Path(args.compare).resolve())
        if args.only_rounds:
            return results
        results["real_stack"] = await real_stack(services, values, base, args, log)
        if args.otelcol:
            results["otelcol"] = otelcol(services, results["real_stack"], args, workdir)
        if args.only_real_stack:
            return results
        results["e_latency"] = await latency(
            bootstrap, full | {"GRAYSCOPE_ES_URL": null_url}, values, args, log
        )
        if args.scaling:
            results["scaling"] = await scaling(services, null_url, endpoints, args, log)
    finally:
        for p in (receiver, null_store):
            p.terminate()
            p.wait(10)
        services.stop()
    for value in results.values():
        if isinstance(value, dict):
            value.pop("metrics", None)
    return results


async def real_stack(
    services: Services,
    values: list[bytes],
    base: dict[str, str],
    args: argparse.Namespace,
    log: Path,
) -> dict[str, Any]:
    """The full worker into real OpenSearch (data stream) + Jaeger, and the store's ceiling.

    Same documents both ways: the ceiling's are built by the worker's own core
    from the same messages (``bench.real_stack.enriched_bulk_bodies``). Each
    load starts with an empty data stream. Measured twice unless ``--store-cpus
    none``: every process on every core (``real_stack``), then OpenSearch on cores
    of its own (``store_pinned``, inside it): on a box the store shares with the
    pipeline, the ratio is bounded by the CPU the rest of the stack takes from the
    store (``cpu_bound_vs_store_ceiling``); pinned, it asks only whether the
    pipeline keeps up with the store.
    """
    n = min(len(values), args.store_events)
    topic = f"{base['GRAYSCOPE_INPUT_TOPICS']}-store"
    await create_topics(services.kafka.bootstrap, [topic], PARTITIONS)
    await produce(services.kafka.bootstrap, topic, values[:n])
    await services.install_templates()
    documents, bodies = enriched_bulk_bodies(values[:n], topic, PARTITIONS, args.bulk_sizes)
    env = base | services.worker_env(topic)
    shared = await store_and_worker(services, env, n, documents, bodies, args, log, None)
    shared["topic"] = topic
    if args.store_cpus:
        services.pin_store(args.store_cpus)
        try:
            shared["store_pinned"] = await store_and_worker(
                services, env, n, documents, bodies, args, log, args.store_cpus
            )
        finally:
            services.pin_store(None)
    return shared


async def store_and_worker(
    services: Services,
    env: dict[str, str],
    n: int,
    documents: int,
    bodies: dict[int, list[bytes]],
    args: argparse.Namespace,
    log: Path,
    store_cpus: set[int] | None,
) -> dict[str, Any]:
    """The store's ceiling, then the worker's best of ``--repeat`` runs, on the same CPUs.

    One unmeasured worker run first: the ceiling's loads warm the store's JIT up, but
    the worker's requests reach code they did not (measured: OpenSearch's compiler took
    8-12 µs per document in the first worker run after the warm-up, ~1 after), and
    the worker's run must not pay for what the ceiling was spared.
    """
    ceiling = await store_ceiling(services, documents, bodies, args.bulk_concurrency)
    services.reset_data_stream()
    run_worker(env, n, log, args.timeout, progress=DELIVERED)
    worker_runs = []
    for _ in range(max(1, args.repeat)):
        services.reset_data_stream()
        run = run_worker(
            env,
            n,
            log,
            args.timeout,
            progress=DELIVERED,
            watch=services.cpu_clocks(),
            aside=services.jit_clock(),
        )
        run["stored"] = services.document_count()
        worker_runs.append(run)
    worker = best_of(worker_runs)
    worker.pop("metrics", None)
    return {
        **stack_bound(worker, ceiling, store_cpus),
        "events": n,
        "documents": documents,
        "worker_events_per_s": worker["events_per_s"],
        "worker_cpu_us_per_event": worker.get("cpu_us_per_event"),
        "store_ceiling_docs_per_s": ceiling["docs_per_s"],
        "worker_vs_store_ceiling": round(worker["events_per_s"] / ceiling["docs_per_s"], 3),
        "worker": worker,
        "store_ceiling": ceiling,
    }


def stack_bound(
    worker: dict[str, Any], ceiling: dict[str, Any], store_cpus: set[int] | None
) -> dict[str, Any]:
    """What the box's cores allow: the CPU of one event over the whole stack in the
    worker's run (worker, OpenSearch, Jaeger, Kafka), the rate at which that fills
    the cores, and that rate over the store's ceiling: the highest worker / ceiling
    ratio a pipeline that costs this much could reach here. Measured, not assumed: the
    store's CPU per document in the worker's run and at its ceiling both appear. With
    the store on cores of its own (``--store-cpus``) each side fills its own cores."""
    stack = worker.get("stack_cpu")
    if not stack or worker.get("cpu_us_per_event") is None:
        return {}
    per_event = {"worker": worker["cpu_us_per_event"], **stack["cpu_us_per_event"]}
    if store_cpus:
        pipeline = {name: us for name, us in per_event.items() if name != "opensearch"}
        pipeline_cores = len(os.sched_getaffinity(0))
        bound = min(
            cpu_bound({"opensearch": per_event.get("opensearch", 0.0)}, len(store_cpus)),
            cpu_bound(pipeline, pipeline_cores),
        )
    else:
        bound = cpu_bound(per_event, stack["box_cores"])
    return {
        "stack_cpu_us_per_event": per_event,
        "stack_box_busy_cores": stack["box_busy_cores"],
        "stack_jit_us_per_event": stack.get("aside_us_per_event", {}).get("opensearch_jit"),
        "store_ceiling_cpu_us_per_doc": ceiling["best"].get("cpu_us_per_doc"),
        "store_ceiling_box_busy_cores": ceiling["best"].get("box_busy_cores"),
        "store_ceiling_jit_us_per_doc": ceiling["best"].get("jit_us_per_doc"),
        "cpu_bound_events_per_s": round(bound),
        "cpu_bound_vs_store_ceiling": round(bound / ceiling["docs_per_s"], 3),
        "store_cpus": sorted(store_cpus) if store_cpus else None,
    }


def otelcol(
    services: Services, real: dict[str, Any], args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    """The OpenTelemetry Collector (bench/otelcol.py) on the real-stack run's topic,
    into the same OpenSearch (its own data stream), GeoIP on the same database."""
    from bench.otelcol import run_otelcol
    from pipeline.config import Settings

    return run_otelcol(
        services.kafka.bootstrap,
        real["topic"],
        real["events"],
        services.opensearch.url,
        services.jaeger.otlp_grpc_endpoint,
        Settings().geoip_city_db,
        workdir / "otelcol",
        args.timeout,
    )


async def latency(
    bootstrap: str,
    env: dict[str, str],
    values: list[bytes],
    args: argparse.Namespace,
    log: Path,
) -> dict[str, Any]:
    """Kafka record time -> bulk acknowledged at a fixed offered load (instant-ack store)."""
    topic = f"{env['GRAYSCOPE_INPUT_TOPICS']}-latency"
    await create_topics(bootstrap, [topic], PARTITIONS)
    proc, port = start_worker(
        env | {"GRAYSCOPE_INPUT_TOPICS": topic, "GRAYSCOPE_BATCH_TIMEOUT": "0.05"}, log
    )
    try:
        while not metrics(port):
            time.sleep(0.1)
        time.sleep(4)  # group join
        n = int(args.rate * args.latency_seconds)
        await produce(bootstrap, topic, values[:n], rate=args.rate)
        deadline = time.monotonic() + 30
        m = metrics(port)
        while m.get("grayscope_messages_consumed_total", 0) < n and time.monotonic() < deadline:
            time.sleep(0.2)
            m = metrics(port)
        return {
            "offered_events_per_s": args.rate,
            "events": n,
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


def assigned_partitions(m: dict[str, float], topic: str) -> list[int]:
    """The partitions of ``topic`` a worker reports lag for: the ones assigned to it."""
    out = []
    for key in m:
        if key.startswith("grayscope_consumer_lag{") and f'topic="{topic}"' in key:
            out.append(int(key.split('partition="', 1)[1].split('"', 1)[0]))
    return sorted(out)


async def run_workers(
    env: dict[str, str],
    count: int,
    values: list[bytes],
    log: Path,
    timeout: float,
    progress: tuple[str, ...],
) -> dict[str, Any]:
    """``count`` workers in one consumer group on an empty topic; once the group has
    split the partitions between them, ``values`` are produced and consumed.

    Producing after the split keeps a first worker from consuming alone while
    the others join; the producer is faster than the workers (``produce_events_per_s``).
    """
    bootstrap, topic = env["GRAYSCOPE_KAFKA_BROKERS"], env["GRAYSCOPE_INPUT_TOPICS"]
    n = len(values)
    group = "bench-" + uuid.uuid4().hex[:8]
    workers = [start_worker(env | {"GRAYSCOPE_CONSUMER_GROUP": group}, log) for _ in range(count)]

    async def sample() -> list[dict[str, float]]:
        return [await asyncio.to_thread(metrics, port) for _, port in workers]

    try:
        deadline = time.monotonic() + timeout
        split: list[list[int]] = []
        while time.monotonic() < deadline:
            split = [assigned_partitions(m, topic) for m in await sample()]
            owned = [p for parts in split for p in parts]
            if all(split) and sorted(owned) == list(range(PARTITIONS)):
                break
            if any(proc.poll() is not None for proc, _ in workers):
                raise RuntimeError(f"a worker exited: see {log}")
            await asyncio.sleep(POLL_SECONDS)
        else:
            raise RuntimeError(f"{count} workers never split {topic}: see {log}")
        producer = asyncio.create_task(produce_with_kcat(bootstrap, topic, values, log.parent))
        first: float | None = None
        first_done = 0.0
        cpu_before: list[dict[int, float]] = []
        samples: list[dict[str, float]] = []
        while time.monotonic() < deadline:
            samples = await sample()
            done = sum(sum(m.get(name, 0.0) for name in progress) for m in samples)
            if done and first is None:
                first, first_done = time.perf_counter(), done
                cpu_before = [cpu_seconds(proc.pid) for proc, _ in workers]
            if done >= n:
                break
            if any(proc.poll() is not None for proc, _ in workers):
                raise RuntimeError(f"a worker exited: see {log}")
            await asyncio.sleep(POLL_SECONDS)
        else:
            raise RuntimeError(f"{count} workers did not reach {n} in {timeout} s: see {log}")
        await producer
        elapsed = time.perf_counter() - (first or 0.0)
        per_worker = []
        for (proc, _), m, before, parts in zip(workers, samples, cpu_before, split, strict=True):
            own = sum(m.get(name, 0.0) for name in progress)
            per_worker.append(
                {
                    "events": int(own),
                    "partitions": parts,
                    **cpu_per_event(proc.pid, before, own),
                    "geoip_hit_ratio": geoip_hit_ratio(m),
                }
            )
        return {
            "events_per_s": round((n - first_done) / max(elapsed, 1e-9)),
            "workers": per_worker,
        }
    finally:
        for proc, _ in workers:
            proc.terminate()
        for proc, _ in workers:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def geoip_hit_ratio(m: dict[str, float]) -> float:
    hits = m.get("grayscope_geoip_cache_hits_total", 0.0)
    misses = m.get("grayscope_geoip_cache_misses_total", 0.0)
    return round(hits / max(1.0, hits + misses), 3)


async def scaling(
    services: Services,
    null_url: str,
    endpoints: dict[str, str],
    args: argparse.Namespace,
    log: Path,
) -> dict[str, Any]:
    """1 -> 2 worker processes on a 4-partition topic (instant-ack and real store), and
    the GeoIP cache on a stream of many distinct client addresses."""
    bootstrap = services.kafka.bootstrap
    out: dict[str, Any] = {"partitions": PARTITIONS}
    streams = {
        "synthetic": list(generate(args.scaling_events, seed=7)),
        # --distinct-clients lines, each from a new random public IPv4 address: about
        # as many distinct addresses (and /24 networks) as lines, the GeoIP cache's
        # worst case (its network-level entries rarely hit either).
        "distinct_clients": list(generate(args.distinct_clients, seed=8, internet_clients=True)),
    }
    for stream, values in streams.items():
        out[f"{stream}_distinct_clients"] = distinct_clients(values)
        stores: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
            "null_store": (
                {
                    "GRAYSCOPE_ES_URL": null_url,
                    "GRAYSCOPE_OTLP_ENDPOINT": endpoints["grpc_endpoint"],
                },
                CONSUMED,
            ),
        }
        if stream == "synthetic":
            stores["opensearch"] = (
                {
                    "GRAYSCOPE_ES_URL": services.opensearch.url,
                    "GRAYSCOPE_ES_MODE": "data_stream",
                    "GRAYSCOPE_OTLP_ENDPOINT": services.jaeger.otlp_grpc_endpoint,
                },
                DELIVERED,
            )
        for store, (sinks, progress) in stores.items():
            figures: dict[str, Any] = {}
            for count in (1, 2):
                if store == "opensearch":
                    services.reset_data_stream()
                topic = "scale-" + uuid.uuid4().hex[:8]
                await create_topics(bootstrap, [topic], PARTITIONS)
                env = sinks | {
                    "GRAYSCOPE_KAFKA_BROKERS": bootstrap,
                    "GRAYSCOPE_INPUT_TOPICS": topic,
                }
                figures[f"workers_{count}"] = await run_workers(
                    env, count, values, log, args.timeout, progress
                )
            one, two = (figures[f"workers_{c}"]["events_per_s"] for c in (1, 2))
            figures["ratio_2_vs_1"] = round(two / max(one, 1), 2)
            out[f"{stream}_{store}"] = figures
    return out


def distinct_clients(values: list[bytes]) -> int:
    """How many client addresses the worker will see in these messages."""
    from pipeline.config import Settings, enrich_context
    from pipeline.core.process import Enriched, process_batch

    ctx = enrich_context(Settings(geoip_city_db="", geoip_asn_db=""))
    return len(
        {
            r.enrichment.client_ip  # the document's client.ip
            for r in process_batch(values, ctx)
            if isinstance(r, Enriched)
        }
    )


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} x {os.cpu_count()}"
    return "unknown"


def stack_lines(where: str, stack: dict[str, Any]) -> list[str]:
    """The real stack's ratio, where its CPU went, and the ratio the cores allow."""
    out = [
        f"real stack{where}: worker / store ceiling = "
        f"{stack['worker_vs_store_ceiling']:.2f} (goal >= 0.9)"
    ]
    if "stack_cpu_us_per_event" not in stack:
        return out
    spent = ", ".join(f"{k} {v}" for k, v in stack["stack_cpu_us_per_event"].items())
    ceiling_cpu = ", ".join(
        f"{k} {v}" for k, v in (stack.get("store_ceiling_cpu_us_per_doc") or {}).items()
    )
    out.append(
        f"  CPU µs per event: {spent} (of OpenSearch's, its JIT compiler "
        f"{stack.get('stack_jit_us_per_event')}); box busy "
        f"{stack['stack_box_busy_cores']} of {os.cpu_count()} cores; at the ceiling "
        f"{ceiling_cpu} per doc (JIT {stack.get('store_ceiling_jit_us_per_doc')}), "
        f"{stack.get('store_ceiling_box_busy_cores')} cores busy"
    )
    out.append(
        f"  that work fills the cores at {stack['cpu_bound_events_per_s']:,} events/s = "
        f"{stack['cpu_bound_vs_store_ceiling']:.2f} of the store's ceiling"
    )
    return out


def table(results: dict[str, Any]) -> str:
    """The run as a table; a partial run (``--only-*``) shows the parts it has."""
    ceiling = results.get("a_raw_ceiling")
    ceilings = results.get("a_raw_ceiling_runs", [])
    rows: list[tuple[str, int, float | None, str]] = []
    if ceiling:
        rows.append(
            (
                "a. raw ceiling: aiokafka getmany + orjson",
                ceiling,
                1.0,
                "runs " + "/".join(f"{rate:,}" for rate in ceilings) if len(ceilings) > 1 else "",
            )
        )

    def vs_raw(rate: float) -> float | None:
        return rate / ceiling if ceiling else None

    for key, label in (
        ("b_stock_faust", "b. worker, no sinks, stock Faust agent"),
        ("b_batch_path", "b. worker, no sinks, batch path"),
        ("compare_b_batch_path", "   the same, --compare checkout"),
        ("c_full_null_store", "c. full worker -> instant bulk ack + OTLP"),
        ("compare_c_full_null_store", "   the same, --compare checkout"),
    ):
        if key not in results:
            continue
        r = results[key]
        note = f"RSS {r['peak_rss_mb']} MB"
        if "cpu_us_per_event" in r:
            note += (
                f", CPU {r['cpu_us_per_event']} µs/event (main {r['main_thread_cpu_us_per_event']})"
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
        rows.append((label, r["events_per_s"], r.get("vs_raw", vs_raw(r["events_per_s"])), note))
    real = results.get("real_stack")
    stacks = [("", real)] if real else []
    if real and real.get("store_pinned"):
        pinned_cpus = ",".join(map(str, real["store_pinned"].get("store_cpus") or []))
        stacks.append((f" (store on CPU {pinned_cpus})", real["store_pinned"]))
    for where, stack in stacks:
        worker, best = stack["worker"], stack["store_ceiling"]["best"]
        rows.append(
            (
                "r. full worker -> OpenSearch + Jaeger" + where,
                stack["worker_events_per_s"],
                vs_raw(stack["worker_events_per_s"]),
                f"CPU {worker.get('cpu_us_per_event')} µs/event, stored {worker['stored']:,} "
                f"of {stack['documents']:,}, spans exported {worker['spans_exported']:,} "
                f"dropped {worker['spans_dropped']:,}",
            )
        )
        rows.append(
            (
                "r. OpenSearch ceiling" + (where or " (direct parallel bulk)"),
                stack["store_ceiling_docs_per_s"],
                vs_raw(stack["store_ceiling_docs_per_s"]),
                f"best: bulk {best['bulk_size']:,} x {best['concurrency']} connections; "
                + ", ".join(
                    f"{r['bulk_size']}x{r['concurrency']} {r['docs_per_s']:,}"
                    for r in stack["store_ceiling"]["runs"]
                ),
            )
        )
    if "otelcol" in results:
        col = results["otelcol"]
        rows.append(
            (
                "o. OpenTelemetry Collector -> OpenSearch + Jaeger",
                col["events_per_s"],
                vs_raw(col["events_per_s"]),
                f"CPU {col.get('cpu_us_per_event')} µs/event",
            )
        )
    out = [f"{'path':48} {'events/s':>10} {'vs raw':>7}  notes"]
    for label, rate, ratio, note in rows:
        shown = "-" if ratio is None else f"{ratio:.2f}"
        out.append(f"{label:48} {rate:>10,} {shown:>7}  {note}")
    if "b_stock_faust" in results and "b_batch_path" in results:
        stock = results["b_stock_faust"]["events_per_s"]
        batch = results["b_batch_path"]["events_per_s"]
        out.append(f"batch path vs stock Faust: {batch / max(stock, 1):.1f}x")
    full = results.get("c_full_null_store", {})
    if "cpu_us_per_event" in full:
        out.append(
            f"full path CPU: {full['cpu_us_per_event']} µs/event "
            f"(= {1e6 / full['cpu_us_per_event']:,.0f} events/s on a whole core); "
            f"30,000 events/s on one core needs <= {1e6 / 30_000:.1f} µs/event"
        )
    for where, stack in stacks:
        out.extend(stack_lines(where, stack))
    if "otelcol" in results and real:
        col = results["otelcol"]
        out.append(
            f"CPU per event into OpenSearch: grayscope worker {real['worker_cpu_us_per_event']} µs "
            f"(spans to Jaeger on) vs the Collector {col.get('cpu_us_per_event')} µs (no spans: "
            f"no contrib component makes them from logs); {col.get('docs_indexed', 0):,} docs"
        )
    if "compare_c_full_null_store" in results:
        before = results["compare_c_full_null_store"]
        out.append(
            f"--compare {results['compare_root']}: full path CPU "
            f"{before.get('runs_cpu_us_per_event')} vs this checkout "
            f"{full.get('runs_cpu_us_per_event')} µs/event (per round)"
        )
    lat = results.get("e_latency")
    if lat:
        out.append(
            f"e. latency at {lat['offered_events_per_s']:,} events/s "
            f"(Kafka record time -> bulk acked): p50 {lat.get('p50')} ms, "
            f"p99 {lat.get('p99')} ms, worker peak RSS {lat['peak_rss_mb']} MB"
        )
    if "b_batch_path" in results:
        hits = results["b_batch_path"]["geoip_hit_ratio"]
        out.append(f"GeoIP cache hit ratio (batch path): {hits}")
    scale = results.get("scaling")
    if scale:
        for key, figures in scale.items():
            if not isinstance(figures, dict):
                continue
            parts = []
            for count in (1, 2):
                run = figures[f"workers_{count}"]
                split = " + ".join(
                    f"{w['events']:,} ev on p{','.join(map(str, w['partitions']))}"
                    f" ({w['cpu_us_per_event']} µs, GeoIP hits {w['geoip_hit_ratio']})"
                    for w in run["workers"]
                )
                parts.append(f"{count} worker(s) {run['events_per_s']:,}/s [{split}]")
            out.append(
                f"scaling {key}: " + "; ".join(parts) + f"; 2 vs 1 = {figures['ratio_2_vs_1']}"
            )
        out.append(
            f"scaling streams: synthetic {scale['synthetic_distinct_clients']:,} distinct clients, "
            f"distinct_clients {scale['distinct_clients_distinct_clients']:,}"
        )
    if "produce_events_per_s" in results:
        rate = results["produce_events_per_s"]
        out.append(f"producer (bench process, aiokafka): {rate:,} events/s")
    out.append(f"CPU: {results['cpu']}")
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
    parser.add_argument(
        "--store-events", type=int, default=100_000, help="events for the real-stack runs"
    )
    parser.add_argument(
        "--bulk-sizes",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[1000, 5000],
        help="bulk sizes the store ceiling tries",
    )
    parser.add_argument(
        "--bulk-concurrency",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[1, 2, 4],
        help="connections at once the store ceiling tries",
    )
    parser.add_argument(
        "--store-cpus",
        type=parse_cpus,
        default=default_store_cpus(),
        help="the real stack a second time with OpenSearch on these CPUs only and "
        "everything else (Kafka, Jaeger, the workers, this process) on the others "
        "(default: the last CPU; 'none' skips it): the store gets core(s) of its own, as "
        "on its own machines, and the ratio asks only whether the pipeline keeps up",
    )
    parser.add_argument(
        "--compare",
        default="",
        help="another checkout (with its .venv) whose worker runs b and c in the same rounds",
    )
    parser.add_argument(
        "--no-scaling", dest="scaling", action="store_false", help="skip the 1 -> 2 worker runs"
    )
    parser.add_argument("--scaling-events", type=int, default=200_000)
    parser.add_argument(
        "--no-otelcol",
        dest="otelcol",
        action="store_false",
        help="skip the OpenTelemetry Collector (built into the service cache the first time)",
    )
    parser.add_argument(
        "--distinct-clients",
        type=int,
        default=1_000_000,
        help="lines (and about as many distinct client addresses) of the GeoIP scaling stream",
    )
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
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for every worker of the run (repeatable), e.g. GRAYSCOPE_BATCH_SIZE=5000",
    )
    parser.add_argument(
        "--only-real-stack",
        action="store_true",
        help="only the real-stack runs (and the Collector): for tuning the worker into a store",
    )
    parser.add_argument(
        "--only-scaling", action="store_true", help="only the 1 -> 2 worker scaling runs"
    )
    parser.add_argument(
        "--only-rounds",
        action="store_true",
        help="only the rounds of a, b and c (with --compare: a before/after of the worker)",
    )
    args = parser.parse_args()
    WORKER_ENV.update(item.split("=", 1) for item in args.worker_env)
    results = asyncio.run(main_async(args))
    print(json.dumps(results, indent=2) if args.json else table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
