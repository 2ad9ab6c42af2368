"""Everything a worker holds besides Faust: lookup data, sinks, the batch handler.

Built from Settings before Faust starts (so a missing GeoIP database or a bad
setting is a clear startup error), started with the app, closed after the
app's streams are drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Sequence
from typing import Any

import mode
from aiohttp.web import Response

from agents.batching import BatchPump, consumer_lag
from agents.handler import BatchHandler, InputMessage
from pipeline.canary.observer import CanaryObserver
from pipeline.config import Settings, enrich_context
from pipeline.errors import DeadLetterError, SinkError
from pipeline.geoip import GeoIPResolver
from pipeline.metrics.requests import RequestMetrics
from pipeline.native import NATIVE_MODULES, loaded_native
from pipeline.probe import connect_error
from pipeline.retry import Backoff
from pipeline.sinks.dlq import DeadLetterSink, Headers
from pipeline.sinks.elasticsearch.service import ElasticsearchService
from pipeline.sinks.elasticsearch.sink import ElasticsearchSink
from pipeline.sinks.otlp.exporter import OtlpExporter
from pipeline.telemetry import Telemetry

log = logging.getLogger(__name__)


class FaustRecordProducer:
    """DeadLetterSink's producer on top of the Faust app's own Kafka producer."""

    def __init__(self, app: Any) -> None:
        self._app = app

    async def send_batch(
        self, topic: str, records: Sequence[tuple[bytes | None, bytes, Headers]]
    ) -> None:
        producer = self._app.producer
        try:
            pending = [
                await producer.send(topic, key, value, None, None, headers)
                for key, value, headers in records
            ]
            await asyncio.gather(*pending)
        except Exception as exc:  # aiokafka/Faust errors vary by version
            raise DeadLetterError(f"{type(exc).__name__}: {exc}") from exc


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.geoip = (
            GeoIPResolver.from_settings(settings.geoip)
            if (settings.geoip_city_db or settings.geoip_asn_db)
            else None
        )
        self.context = enrich_context(settings, self.geoip)
        self.telemetry = Telemetry(self)
        self.request_metrics = (
            RequestMetrics.from_settings(settings.metrics) if settings.metrics.enabled else None
        )
        self.es_service: ElasticsearchService | None = None
        self.store: ElasticsearchSink | None = None
        if settings.es_hosts():
            self.es_service = ElasticsearchService.from_settings(settings.store)
            self.store = ElasticsearchSink(
                self.es_service,
                settings.es_mode.value,
                retry_initial=settings.es_retry_initial,
                retry_max=settings.es_retry_max,
                observe_latency=self.telemetry.bulk_latency.observe,
                max_bytes=settings.store.bulk_max_bytes,
            )
        self.exporter = OtlpExporter.from_settings(settings.otlp)
        if (burst := settings.span_burst_warning()) is not None:
            log.warning("%s", burst)
        self.app: Any = None
        self._producer: FaustRecordProducer | None = None
        self.dead_letters: DeadLetterSink | None = None
        self._handler: BatchHandler | None = None
        self._ready: asyncio.Event | None = None
        self.pump: BatchPump | None = None
        self.canary_observer: CanaryObserver | None = None  # set by create_app

    @property
    def handler(self) -> BatchHandler:
        assert self._handler is not None, "runtime not started"
        return self._handler

    def _ready_event(self) -> asyncio.Event:
        if self._ready is None:
            self._ready = asyncio.Event()
        return self._ready

    async def wait_ready(self) -> None:
        await self._ready_event().wait()

    @property
    def is_ready(self) -> bool:
        return self._ready is not None and self._ready.is_set()

    def attach(self, app: Any) -> None:
        """Hook the runtime into the Faust app's lifecycle and web server."""
        self.app = app
        self._producer = FaustRecordProducer(app)
        self.dead_letters = DeadLetterSink(
            self._producer,
            self.settings.dlq_topic,
            retry_initial=self.settings.es_retry_initial,
            retry_max=self.settings.es_retry_max,
        )
        self._handler = BatchHandler(
            self.context,
            self.store,
            self.dead_letters,
            self.exporter,
            self.settings.es_mode.value,
            observe_latency=self.telemetry.delivery_latency.observe_many,
            observer=self.canary_observer,
            request_metrics=self.request_metrics,
        )
        runtime = self

        @app.service
        class RuntimeService(mode.Service):
            async def on_start(self) -> None:
                await runtime.start()

            async def on_stop(self) -> None:
                await runtime.stop()

        @app.page("/metrics")
        async def metrics(web: Any, request: Any) -> Any:
            body, content_type = await runtime.telemetry.render()
            return Response(body=body, headers={"Content-Type": content_type})

        @app.page("/healthz")
        async def healthz(web: Any, request: Any) -> Any:
            status = await runtime.health()
            code = 200 if status["ready"] else 503
            return web.json(status, status=code)

    def start_batch_path(self, app: Any) -> None:
        """Wire the BatchingConsumer to a BatchPump (batch consumer mode)."""
        consumer = app.consumer

        async def handle(messages: list[InputMessage]) -> None:
            await self.wait_ready()
            await self.handler.handle(messages)

        self.pump = BatchPump(
            lambda: consumer,
            handle,
            self.settings.batch_size,
            self.settings.batch_concurrency,
        )
        consumer.batch_topics = frozenset(self.settings.input_topics)
        consumer.handoff = self.pump.queue
        self.pump.start()

    def revocation_scope(self) -> contextlib.AbstractContextManager[None]:
        """Held around a whole revocation (ours and Faust's): batches in flight must
        not wait for span room meanwhile (``OtlpExporter.waits_released``)."""
        if self.exporter is None:
            return contextlib.nullcontext()
        return self.exporter.waits_released()

    async def on_partitions_revoked(self) -> None:
        if self.pump is not None:
            dropped = await self.pump.revoke()
            if dropped:
                log.info("rebalance: dropped %d fetched messages, to be read again", dropped)

    async def interrupt_inflight(self) -> bool:
        """True when a batch had to be abandoned (its offsets stay uncommitted)."""
        if self.pump is not None:
            self.pump.drop_queued()
        if self._handler is None:
            return False
        abandoned = await self._handler.interrupt(self.settings.shutdown_grace)
        if self.pump is not None:
            await self.pump.stop()
        return abandoned

    async def start(self) -> None:
        await self._declare_dlq_topic()
        if self.es_service is not None:
            await self._connect_store()
        if self.exporter is not None:
            self.exporter.start()
        # Startup objects (modules, GeoIP metadata, templates) live forever: keep them
        # out of every future collection.
        gc.freeze()
        self._ready_event().set()
        compiled = loaded_native()
        log.info(
            "grayscope worker ready",
            extra={
                "settings": self.settings.redacted(),
                # mypyc-built core in use (pipeline/native.py): all of its modules, or
                # "0/N" where it runs as plain Python (~30 % more CPU per event).
                "compiled_core": f"{len(compiled)}/{len(NATIVE_MODULES)}",
            },
        )

    async def _declare_dlq_topic(self) -> None:
        with contextlib.suppress(Exception):  # clusters may forbid creation; sends still work
            await self.app.topic(self.settings.dlq_topic).maybe_declare()

    async def _connect_store(self) -> None:
        assert self.es_service is not None
        backoff = Backoff(self.settings.es_retry_initial, self.settings.es_retry_max)
        attempt = 0
        while True:
            try:
                await self.es_service.connect()
                if self.settings.es_install_templates:
                    await self.es_service.install_templates()
                return
            except SinkError as exc:
                if not exc.retriable:
                    raise
                log.warning("document store unreachable at startup (%s); retrying", exc)
                await backoff.wait(attempt)
                attempt += 1

    def consumer_lag(self) -> dict[tuple[str, int], int] | None:
        """(topic, partition) -> messages not yet committed, for ``/metrics``."""
        return consumer_lag(self.app)

    async def stop(self) -> None:
        if self.exporter is not None:
            await self.exporter.stop(flush_timeout=5.0)
        if self.es_service is not None:
            await self.es_service.close()
        if self.geoip is not None:
            self.geoip.close()

    async def health(self) -> dict[str, Any]:
        kafka_ok = await self._kafka_reachable()
        store_ok = True
        if self.es_service is not None:
            store_ok = await self.es_service.ping()
        ready = self.is_ready and kafka_ok and store_ok
        return {"ready": ready, "kafka": kafka_ok, "store": store_ok, "started": self.is_ready}

    async def _kafka_reachable(self) -> bool:
        for broker in self.settings.kafka_brokers.split(","):
            host, _, port = broker.strip().rpartition(":")
            try:
                number = int(port or 9092)
            except ValueError:
                continue
            if await connect_error(host or "localhost", number, timeout=1.0) is None:
                return True
        return False
