"""The Faust app: thin. Consume, call the core, hand to the sinks, ack.

Offsets are committed by Faust only for acked events; an event is acked only
after ``BatchHandler.handle`` returned, i.e. after every message of its batch
is stored or dead-lettered. If the batch is interrupted (shutdown, crash), or
(``GRAYSCOPE_OTLP_WHEN_FULL=block``) a rebalance released its wait for span room
before all its spans were queued, its events are withheld from acking so their
offsets are never committed.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

import faust
from faust.types import EventT
from mode.utils.objects import cached_property
from mode.utils.queues import FlowControlEvent

from agents.batching import (
    BatchPathApp,
    batch_path_problem,
    consumer_group_error,
    unacked_messages,
)
from agents.canary import register_canary
from agents.handler import BatchHandler, InputMessage
from agents.runtime import Runtime
from pipeline.config import ConsumerMode, Settings
from pipeline.core.model import KafkaCoordinates
from pipeline.errors import GrayscopeError, ShutdownInterrupted
from pipeline.kafka_options import fatal_group_error, faust_broker_settings

log = logging.getLogger(__name__)

#: The consumers' metadata refresh. A topic the app declares at its first start (the
#: canary's aggregates, the changelogs) can still be missing from the broker's
#: metadata when the group first assigns (seen on a loaded box); Faust's assignor
#: then skips it, and the group rebalances only once the leader's metadata shows it:
#: Faust's default refresh is 5 minutes, this bounds that wait (one metadata request
#: per 30 s).
METADATA_MAX_AGE_MS = 30_000

#: Seconds between looks for a consumer-group error aiokafka gave up on
#: (``GrayscopeApp.watch_consumer_group``): a few attribute reads each.
GROUP_ERROR_CHECK_INTERVAL = 1.0


def process_data_dir() -> str:
    """This process's temporary Faust data directory (``GRAYSCOPE_DATA_DIR`` empty): made
    on first use, shared by every app of the process, removed when the process exits.

    One per app call, never removed, left an empty directory in the temporary directory
    for every worker start and every app a test made (~2,800 in a day of test runs here).
    """
    return _data_dir_of(os.getpid())


@functools.cache
def _data_dir_of(pid: int) -> str:
    # By pid: a forked child makes its own, and never removes its parent's at its exit.
    path = tempfile.mkdtemp(prefix="grayscope-faust-")
    atexit.register(_remove_data_dir, pid, path)
    return path


def _remove_data_dir(pid: int, path: str) -> None:
    if os.getpid() == pid:
        shutil.rmtree(path, ignore_errors=True)


def faust_settings(settings: Settings, topic_replicas: int | None = None) -> dict[str, Any]:
    conf: dict[str, Any] = {
        **faust_broker_settings(settings.kafka),
        "value_serializer": "raw",
        "key_serializer": "raw",
        "web_host": settings.web_host,
        "web_port": settings.web_port,
        "web_enabled": True,
        "consumer_auto_offset_reset": "earliest",
        "producer_acks": -1,
        "datadir": settings.data_dir or process_data_dir(),
        "store": "memory://",
        # Enough buffered events for two full batches per partition.
        "stream_buffer_maxsize": max(4096, settings.batch_size * 2),
        "broker_commit_every": max(1000, settings.batch_size),
        "broker_max_poll_records": settings.batch_size,
        "broker_commit_interval": 1.0,
        "broker_session_timeout": settings.kafka_session_timeout,
        "broker_heartbeat_interval": min(3.0, settings.kafka_session_timeout / 4),
        "broker_rebalance_timeout": settings.kafka_rebalance_timeout,
        "broker_check_crcs": settings.kafka.check_crcs,
        "consumer_metadata_max_age_ms": METADATA_MAX_AGE_MS,
        "topic_allow_declare": True,
        "topic_disable_leader": True,
    }
    if topic_replicas is not None:
        # Topics the worker declares (changelogs, verdicts, dead letters) as replicated
        # as the cluster's default, not Faust's 1.
        conf["topic_replication_factor"] = topic_replicas
    return conf


def to_input_messages(events: Sequence[EventT]) -> list[InputMessage]:
    out = []
    for event in events:
        message = event.message
        timestamp = message.timestamp
        out.append(
            InputMessage(
                value=message.value,
                key=message.key,
                coords=KafkaCoordinates(message.topic, message.partition, message.offset),
                timestamp_ns=int(timestamp * 1e9) if timestamp else None,
            )
        )
    return out


def withhold_acks(events: Sequence[EventT]) -> None:
    """Keep an interrupted batch's offsets from ever being committed.

    ``Stream.take_events`` acks its buffered events in a ``finally`` block, also
    when the agent body raised or was cancelled. Marking the messages as
    already acked makes that ack a no-op, so the consumer never records these
    offsets and the next owner of the partition reads them again.
    """
    for event in events:
        event.message.acked = True


async def handle_stream_batch(handler: BatchHandler, events: Sequence[EventT]) -> None:
    """One ``take_events`` batch of the stock stream path through the handler.

    Block mode: a batch whose wait for span room a rebalance released could not
    queue all its spans (``BatchOutcome.spans_released``). Its documents are stored,
    but its acks are withheld, so the partition's next owner reads it again, spans
    included, as in the batch consumer mode. Acked, Faust's revocation would commit it
    (``wait_empty`` commits what the streams acked) and those spans would be lost. The
    next owner (this worker too: Faust seeks every stream partition to its committed
    offset after a rebalance) reads from the last commit.
    """
    outcome = await handler.handle(to_input_messages(events))
    if outcome.spans_released:
        withhold_acks(events)
        log.info(
            "rebalance: a batch of %d released from its wait for span room (%d spans "
            "dropped) left unacked, to be read again",
            len(events),
            outcome.spans_released,
        )


class ResumeKeepsQueued(FlowControlEvent):
    """Faust's flow control of the stream queues, but resuming a running flow keeps them.

    The stock ``resume`` clears every stream queue, to drop what was fetched before
    the flow was suspended (a revocation suspends it, and clears them too). After a
    rebalance, though, Faust's table recovery resumes the flow to read the changelogs,
    then resumes the input partitions, seeks them to their committed offsets and
    resumes the flow once more: meanwhile the fetcher has already put the partitions'
    first messages in the queues and the consumer has moved its read offsets past
    them, so it never fetches them again. Cleared, they were never handed to the
    agent nor acked: one missing at a partition's head let Faust's commit pass it (its
    gap check lets a single missing offset through: a document lost), more stuck the
    partition's commit (the stream mode's loss across a rebalance, see README.md).
    Whatever a running flow queued belongs to the current assignment (a message fetched
    both before and after the seek is handled twice: stored again under its ``_id``); a
    resume after a suspension still clears.
    """

    def resume(self) -> None:
        if self.is_active():
            return
        super().resume()


class GrayscopeApp(BatchPathApp, faust.App):
    """faust.App with grayscope's consumption path and bounded shutdown.

    In ``batch`` consumer mode the transport's consumer is a BatchingConsumer
    (agents/batching.py) that hands the input topics to the pipeline a fetch
    at a time; everything else stays stock Faust. On faust-streaming or
    aiokafka versions the batch path was not tested with, the worker warns and
    uses the stock stream path (``create_app``).
    """

    grayscope_runtime: Runtime

    @cached_property
    def flow_control(self) -> FlowControlEvent:
        return ResumeKeepsQueued(loop=self.loop)

    async def on_start(self) -> None:
        await super().on_start()
        # From the start: a refused join leaves the app waiting for an assignment (and
        # Faust's timers and services unstarted) for ever.
        self.add_future(self.watch_consumer_group())
        if self.batch_path:
            self.grayscope_runtime.start_batch_path(self)

    def check_consumer_group(self) -> None:
        """Raise, mapped to the error tree, what Kafka refused the consumer group for good."""
        error = consumer_group_error(self)
        if error is not None:
            raise fatal_group_error(error, self.grayscope_runtime.settings.kafka) from error

    async def watch_consumer_group(self) -> None:
        """Stop the worker on a consumer-group error aiokafka gave up on.

        aiokafka keeps it for a ``getmany`` Faust never calls and retries the join in
        vain meanwhile (``agents.batching.consumer_group_error``): without this the
        worker would run for ever without a partition. One log line names the cause
        and the setting to change; the worker exits non-zero (``grayscope worker``).
        """
        while not self.should_stop:
            await self.sleep(GROUP_ERROR_CHECK_INTERVAL)
            try:
                self.check_consumer_group()
            except GrayscopeError as exc:
                log.critical("Kafka consumer group error, stopping the worker: %s", exc)
                await self.crash(exc)
                return

    async def on_revoked(self) -> None:
        await self.grayscope_runtime.on_partitions_revoked()

    def revocation_scope(self) -> contextlib.AbstractContextManager[None]:
        return self.grayscope_runtime.revocation_scope()

    async def on_stop(self) -> None:
        # Faust's stop waits until every started message is acked; a batch stuck
        # behind a dead store never would be. Give it a grace period, then abandon it.
        if await self.grayscope_runtime.interrupt_inflight():
            # Messages fetched behind the abandoned batch will never reach the agent
            # either; withhold them too so the consumer's drain does not wait on them.
            for message in unacked_messages(self.consumer):
                message.acked = True
        await super().on_stop()


def create_app(
    settings: Settings, runtime: Runtime | None = None, topic_replicas: int | None = None
) -> faust.App:
    app = GrayscopeApp(settings.consumer_group, **faust_settings(settings, topic_replicas))
    runtime = runtime or Runtime(settings)
    app.grayscope_runtime = runtime
    problem = batch_path_problem()
    app.batch_path = settings.consumer_mode is ConsumerMode.BATCH
    if app.batch_path and problem is not None:
        log.warning(
            "batch consumption path not tested on %s: using Faust's stock stream path", problem
        )
        app.batch_path = False
    app.stream_fence = not app.batch_path and problem is None
    input_topic = app.topic(*settings.input_topics, value_serializer="raw", key_serializer="raw")

    @app.agent(input_topic, name="grayscope-enrich")
    async def enrich(stream: faust.StreamT[bytes]) -> None:
        await runtime.wait_ready()
        batches = stream.take_events(  # type: ignore[attr-defined]
            settings.batch_size, within=settings.batch_timeout
        )
        async for events in batches:
            try:
                await handle_stream_batch(runtime.handler, events)
            except asyncio.CancelledError:
                withhold_acks(events)
                raise
            except ShutdownInterrupted:
                withhold_acks(events)
                log.warning("stopping: abandoned a batch of %d, to be consumed again", len(events))
                return
            except BaseException as exc:
                # The handler retries everything retriable itself; what escapes is fatal
                # (bad credentials, a bug). Restarting only the agent would skip this
                # batch's offsets, so stop the worker: its successor resumes at the last commit.
                withhold_acks(events)
                log.critical("fatal error, stopping the worker: %s", exc)
                await app.crash(exc)
                raise

    runtime.canary_observer = register_canary(app, settings, runtime)
    runtime.attach(app)
    return app
