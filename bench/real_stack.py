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
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
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


async def _load(url: str, bodies: Sequence[bytes], concurrency: int) -> tuple[float, int]:
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
    for size, size_bodies in bodies.items():
        for concurrency in concurrencies:
            services.reset_data_stream()
            seconds, failed = await _load(services.opensearch.url, size_bodies, concurrency)
            stored = services.document_count()
            runs.append(
                {
                    "bulk_size": size,
                    "concurrency": concurrency,
                    "docs_per_s": round(documents / seconds),
                    "failed": failed,
                    "stored": stored,
                }
            )
    best = max(runs, key=lambda r: r["docs_per_s"])
    return {"docs_per_s": best["docs_per_s"], "best": best, "runs": runs}
