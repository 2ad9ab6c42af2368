"""The real services for ``make bench``, and what is measured against them.

- :class:`Services`: Apache Kafka (KRaft), OpenSearch and Jaeger as plain
  processes on free loopback ports (``pipeline.dev.stack``; the cache that
  ``make services`` fills), sized for a benchmark rather than for the tests
  (bigger heaps, every OpenSearch module the runner ships).
- :func:`enriched_bulk_bodies`: the documents the worker writes for these
  messages, made by the worker's own core (same GeoIP, same ``_id`` from the
  Kafka coordinates, same data stream), as ``_bulk`` bodies.
- :func:`store_ceiling`: those bodies bulk-loaded straight into OpenSearch over
  several connections at once, for every bulk size and concurrency asked; the
  best is the store's own ceiling on this box.
- :func:`cpu_bound`: where the CPU of a run went (store, worker, Jaeger, Kafka,
  per event, from ``/proc``) and the rate the box's cores allow for that much work:
  on a machine the store shares with the pipeline, that, not the pipeline's
  speed alone, bounds the worker's share of the store's ceiling.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from pipeline.config import Settings, StackSettings, enrich_context
from pipeline.core.bulk import build_bulk_body, build_bulk_items
from pipeline.core.model import InputMessage, KafkaCoordinates
from pipeline.core.process import process_batch
from pipeline.dev.stack.jaeger import JaegerServer, build_jaeger
from pipeline.dev.stack.kafka import KafkaNode, kafka_lib
from pipeline.dev.stack.opensearch import OpenSearchNode, opensearch_lib
from pipeline.errors import StoreHTTPError
from pipeline.geoip import GeoIPResolver
from pipeline.sinks.elasticsearch.service import ElasticsearchService
from schemas import DATA_STREAM_NAME

# Heaps for a benchmark on a 24 GiB box (the tests use 512m / 1g): OpenSearch
# indexes tens of thousands of documents a second here and its young GC must not
# be what is measured.
KAFKA_HEAP = "1g"
OPENSEARCH_HEAP = "4g"


@dataclass
class Services:
    kafka: KafkaNode
    opensearch: OpenSearchNode
    jaeger: JaegerServer

    @classmethod
    def start(cls, workdir: Path) -> Services:
        settings = StackSettings.model_validate({})
        cache = Path(settings.cache_dir)
        java_home = settings.java_home or None
        kafka = KafkaNode(
            data_dir=_fresh(workdir / "kafka"),
            lib=kafka_lib(cache),
            heap=KAFKA_HEAP,
            java_home=java_home,
        )
        opensearch = OpenSearchNode(
            data_dir=_fresh(workdir / "opensearch"),
            lib=opensearch_lib(cache),
            heap=OPENSEARCH_HEAP,
            java_home=java_home,
        )
        jaeger = JaegerServer(build_jaeger(cache), _fresh(workdir / "jaeger"))
        kafka.spawn()
        opensearch.spawn()
        try:
            jaeger.start()
            kafka.wait_ready()
            opensearch.wait_ready()
        except BaseException:
            for stop in (jaeger.stop, opensearch.stop, kafka.stop):
                stop()
            raise
        return cls(kafka, opensearch, jaeger)

    def pin_store(self, store_cpus: set[int] | None) -> None:
        """OpenSearch on ``store_cpus`` only, and Kafka, Jaeger and this process (so every
        worker it starts from now on: affinity is inherited) on the other CPUs: the store
        gets cores of its own, as on its own machines in production, and the pipeline
        cannot take them. None: everything on every CPU again."""
        everything = set(range(os.cpu_count() or 1))
        rest = everything - store_cpus if store_cpus else everything
        if not rest:
            raise ValueError(f"store CPUs {sorted(store_cpus or ())} leave none for the pipeline")
        for name, pid in self._pids().items():
            set_affinity(pid, (store_cpus or everything) if name == "opensearch" else rest)
        for task in _threads([os.getpid()]):  # this process alone, not the services
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(task.name), rest)

    def _pids(self) -> dict[str, int]:
        named = {
            "opensearch": self.opensearch.process.pid,
            "jaeger": self.jaeger.pid,
            "kafka": self.kafka.process.pid,
        }
        return {name: pid for name, pid in named.items() if pid}

    def worker_env(self, topic: str) -> dict[str, str]:
        """A worker's settings: ``topic`` from this Kafka into this OpenSearch (the data
        stream, as by default) with spans to this Jaeger."""
        return {
            "GRAYSCOPE_KAFKA_BROKERS": self.kafka.bootstrap,
            "GRAYSCOPE_INPUT_TOPICS": topic,
            "GRAYSCOPE_ES_URL": self.opensearch.url,
            "GRAYSCOPE_ES_MODE": "data_stream",
            "GRAYSCOPE_OTLP_ENDPOINT": self.jaeger.otlp_grpc_endpoint,
        }

    def cpu_clocks(self) -> dict[str, Callable[[], float]]:
        """CPU-seconds clocks of the services by name (each with its children)."""
        return {name: partial(tree_cpu_seconds, pid) for name, pid in self._pids().items()}

    def jit_clock(self) -> dict[str, Callable[[], float]]:
        """The CPU-seconds clock of OpenSearch's JIT compiler threads (part of its CPU)."""
        pid = self.opensearch.process.pid
        return {"opensearch_jit": partial(jit_cpu_seconds, pid)} if pid else {}

    def stop(self) -> None:
        self.jaeger.stop()
        self.opensearch.stop()
        self.kafka.stop()

    async def install_templates(self) -> None:
        """The worker's index templates, installed by the worker's own store service."""
        service = ElasticsearchService.from_settings(Settings(es_url=self.opensearch.url).store)
        try:
            await service.install_templates()
        finally:
            await service.close()

    def reset_data_stream(self) -> None:
        """Delete the access data stream (templates stay): each load starts empty."""
        with contextlib.suppress(StoreHTTPError):
            self.opensearch.request("DELETE", f"/_data_stream/{DATA_STREAM_NAME}")

    def document_count(self) -> int:
        try:
            self.opensearch.request("POST", f"/{DATA_STREAM_NAME}/_refresh")
            answer = self.opensearch.request("GET", f"/{DATA_STREAM_NAME}/_count")
        except StoreHTTPError:
            return 0
        return int(answer.get("count", 0))


def _process_tree(pid: int) -> list[int]:
    """``pid`` and every live descendant."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, ()))
    return tree


def stat_cpu_seconds(stat: str) -> float:
    """User + system CPU seconds from the text of a ``/proc/PID[/task/TID]/stat``."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and every live descendant.

    A launcher may run the service in a child (OpenSearch's does not exec into the
    JVM everywhere), and a process's own ``/proc/PID/stat`` counts a child only once
    it has exited and been waited for.
    """
    total = 0.0
    for member in _process_tree(pid):
        with contextlib.suppress(OSError):
            total += stat_cpu_seconds(Path(f"/proc/{member}/stat").read_text())
    return total


def _threads(pids: Iterable[int]) -> Iterator[Path]:
    """``/proc/PID/task/TID`` of every thread of these processes (those that end
    meanwhile are skipped; so must a caller's reads of them be)."""
    for pid in pids:
        with contextlib.suppress(OSError):
            yield from Path(f"/proc/{pid}/task").iterdir()


def set_affinity(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` and its descendants on ``cpus`` (threads started later
    inherit it from the thread that starts them)."""
    for task in _threads(_process_tree(pid)):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), cpus)


def jit_cpu_seconds(pid: int) -> float:
    """CPU seconds of the JIT compiler threads (``C1/C2 CompilerThread``) of a JVM
    (``pid`` and its descendants): a freshly started OpenSearch spends up to half of
    its CPU compiling during its first few hundred thousand documents."""
    total = 0.0
    for task in _threads(_process_tree(pid)):
        with contextlib.suppress(OSError):
            stat = (task / "stat").read_text()
            if "CompilerThre" in stat[: stat.rindex(")")]:
                total += stat_cpu_seconds(stat)
    return total


def parse_cpus(text: str) -> set[int] | None:
    """``--store-cpus``: "1" or "2,3" -> the CPUs; "none" -> None."""
    return None if text == "none" else {int(cpu) for cpu in text.split(",")}


def default_store_cpus() -> set[int] | None:
    """The last CPU for the store when there are two or more, else none."""
    cpus = os.cpu_count() or 1
    return {cpus - 1} if cpus > 1 else None


def own_cpu_seconds() -> float:
    """CPU seconds of this process alone (not its children: the services it started)."""
    times = os.times()
    return times.user + times.system


def machine_cpu_ticks() -> list[int]:
    """The machine's CPU ticks since boot by kind (user, nice, system, idle, iowait, irq,
    softirq, steal, ...), from the first line of ``/proc/stat``."""
    return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]


def busy_cpu_ticks() -> tuple[int, int]:
    """(busy, all) CPU ticks of the whole machine since boot
    (busy: everything but idle and iowait; steal counts as busy, it is a core lost)."""
    fields = machine_cpu_ticks()
    every = sum(fields[:8])
    return every - fields[3] - fields[4], every


class CpuMeter:
    """CPU seconds of named clocks (:func:`tree_cpu_seconds` of a service,
    :func:`own_cpu_seconds`) and of the whole box between :meth:`start` and :meth:`stop`."""

    def __init__(
        self,
        clocks: dict[str, Callable[[], float]],
        aside: dict[str, Callable[[], float]] | None = None,
    ) -> None:
        """``aside``: clocks of CPU already counted in one of ``clocks`` (the store's
        JIT compiler threads), reported apart so that the total is not counted twice."""
        self.clocks = clocks
        self.aside = aside or {}
        self.before: dict[str, float] = {}
        self.ticks = (0, 0)
        self.started = 0.0

    def start(self) -> CpuMeter:
        self.before = {name: clock() for name, clock in (self.clocks | self.aside).items()}
        self.ticks = busy_cpu_ticks()
        self.started = time.perf_counter()
        return self

    def stop(self, events: float) -> dict[str, Any]:
        """CPU µs per event of each process, and how many cores the box kept busy."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        busy, every = busy_cpu_ticks()
        cores = os.cpu_count() or 1
        spent = {
            name: round((clock() - self.before[name]) * 1e6 / max(events, 1.0), 2)
            for name, clock in (self.clocks | self.aside).items()
        }
        share = (busy - self.ticks[0]) / max(every - self.ticks[1], 1)
        return {
            "cpu_us_per_event": {name: spent[name] for name in self.clocks},
            "aside_us_per_event": {name: spent[name] for name in self.aside},
            "box_busy_cores": round(share * cores, 2),
            "box_cores": cores,
            "seconds": round(elapsed, 3),
        }


def cpu_bound(cpu_us_per_event: dict[str, float], cores: int) -> float:
    """Events/s at which the work of one event (every process's CPU µs) fills ``cores``:
    no schedule of that work on this box goes faster."""
    return cores * 1e6 / max(sum(cpu_us_per_event.values()), 1e-9)


def _fresh(path: Path) -> Path:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def enriched_bulk_bodies(
    values: Sequence[bytes], topic: str, partitions: int, sizes: Iterable[int]
) -> tuple[int, dict[int, list[bytes]]]:
    """``(documents, {bulk size: bodies})`` for these messages, as the worker builds them.

    Coordinates are round-robin over ``partitions`` like the producer's
    (round-robin, no key), so the ``_id``s have the worker's shape.
    """
    settings = Settings()
    geoip = (
        GeoIPResolver.from_settings(settings.geoip)
        if settings.geoip_city_db or settings.geoip_asn_db
        else None
    )
    ctx = enrich_context(settings, geoip)
    now = time.time_ns()
    messages = [
        InputMessage(value, None, KafkaCoordinates(topic, i % partitions, i // partitions), now)
        for i, value in enumerate(values)
    ]
    items, _ = build_bulk_items(messages, process_batch(values, ctx), "data_stream")
    if geoip is not None:
        geoip.close()
    return len(items), {
        size: [build_bulk_body(items[i : i + size]) for i in range(0, len(items), size)]
        for size in sizes
    }


async def bulk_load(url: str, bodies: Sequence[bytes], concurrency: int) -> tuple[float, int]:
    """Bulk-load ``bodies`` over ``concurrency`` connections; (seconds, failed items).

    A 429 (the write queue full) is retried after a short pause, as a client
    should: the ceiling is what the store absorbs, not how fast it refuses.
    """
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    failed = 0
    headers = {"Content-Type": "application/x-ndjson"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def sender() -> None:
            nonlocal failed
            while not queue.empty():
                body = queue.get_nowait()
                while True:
                    async with session.post(url + "/_bulk", data=body, headers=headers) as rsp:
                        raw = await rsp.read()
                    if rsp.status == 429:
                        await asyncio.sleep(0.05)
                        continue
                    answer = orjson.loads(raw)
                    if answer.get("errors"):
                        failed += sum(
                            1
                            for item in answer["items"]
                            for result in item.values()
                            if result.get("status", 500) >= 300
                        )
                    break

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        return time.perf_counter() - started, failed


async def store_ceiling(
    services: Services, documents: int, bodies: dict[int, list[bytes]], concurrencies: Sequence[int]
) -> dict[str, Any]:
    """Docs/s of every (bulk size, concurrency), each into an empty data stream; the best."""
    runs = []
    store = {"opensearch": services.cpu_clocks()["opensearch"], "loader": own_cpu_seconds}
    warm_up = await warm_store(services, max(bodies.items())[1], max(concurrencies))
    for size, size_bodies in bodies.items():
        for concurrency in concurrencies:
            services.reset_data_stream()
            meter = CpuMeter(store, services.jit_clock()).start()
            seconds, failed = await bulk_load(services.opensearch.url, size_bodies, concurrency)
            cpu = meter.stop(documents)
            stored = services.document_count()
            runs.append(
                {
                    "bulk_size": size,
                    "concurrency": concurrency,
                    "docs_per_s": round(documents / seconds),
                    "failed": failed,
                    "stored": stored,
                    "cpu_us_per_doc": cpu["cpu_us_per_event"],
                    "jit_us_per_doc": cpu["aside_us_per_event"].get("opensearch_jit"),
                    "box_busy_cores": cpu["box_busy_cores"],
                }
            )
    best = max(runs, key=lambda r: r["docs_per_s"])
    return {"docs_per_s": best["docs_per_s"], "best": best, "runs": runs, "warm_up": warm_up}


#: Warm-up ends when the JIT compiler took at most this share of the store's CPU in a load.
JIT_SETTLED = 0.05
WARM_UP_LOADS = 12


async def warm_store(
    services: Services, bodies: Sequence[bytes], concurrency: int
) -> list[dict[str, float]]:
    """Load ``bodies`` into the store (unmeasured) until its JIT compiler has settled.

    A fresh OpenSearch JVM compiles for its first few hundred thousand documents:
    measured here (store pinned to one core, bulks of 5,000 x 2, 50,000 documents a
    load), the compiler threads took 3.45, 2.41, 2.33, 0.90, 0.43, 0.48, 0.32, 0.20 s
    of 7.5, 6.0, 6.5, 3.4, 4.3, 3.3, 2.7, 2.6 s loads, and the rate went 6.6k -> 19.3k
    docs/s. A ceiling measured on a cold JVM is the compiler's, not the store's, and
    whichever of the ceiling and the worker's run comes later would look better.
    Returns each warm-up load's seconds and the compiler's share of the store's CPU.
    """
    rounds: list[dict[str, float]] = []
    store = {"opensearch": services.cpu_clocks()["opensearch"]}
    for _ in range(WARM_UP_LOADS):
        services.reset_data_stream()
        meter = CpuMeter(store, services.jit_clock()).start()
        seconds, _failed = await bulk_load(services.opensearch.url, bodies, concurrency)
        cpu = meter.stop(1.0)  # only the compiler's share of the store's CPU is used
        jit = cpu["aside_us_per_event"].get("opensearch_jit", 0.0)
        share = jit / max(cpu["cpu_us_per_event"]["opensearch"], 1e-9)
        rounds.append({"seconds": round(seconds, 2), "jit_share": round(share, 3)})
        if share <= JIT_SETTLED:
            break
    return rounds
