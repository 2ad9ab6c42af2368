"""The demo's traffic: a staged rollout of synthetic requests, then the wait for the worker.

Each stage sends synthetic gray-release traffic with its canary share for its
part of the duration, at one steady rate across stages (the rate schedule of
:class:`~pipeline.commands.produce.KafkaSender` carries over). Events are stamped with
the wall clock as they are generated, so they land in today's daily index
and the rollout windows can be found again with a ``range`` on @timestamp.
SIGINT/SIGTERM stop the traffic (and the waiting) at the next message.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pipeline.commands.produce import (
    KafkaSender,
    StatusLine,
    chunked,
    format_duration,
    iterate,
    synthetic_chunk_size,
    synthetic_values,
)
from pipeline.dev.demo.progress import Counts, drain_line, drained, traffic_line
from pipeline.dev.demo.stages import Stage, stage_at
from pipeline.dev.demo.summary import Window
from pipeline.dev.synth import FunnelTraffic

POLL_INTERVAL = 0.5
DRAIN_TIMEOUT = 90.0
SPAN_SETTLE = 2.0
SPAN_TIMEOUT = 15.0


@dataclass(slots=True)
class TrafficResult:
    interrupted: bool = False
    windows: list[Window] = field(default_factory=list)
    produced: int = 0  # acknowledged by the broker
    failed: int = 0
    counts: Counts = field(default_factory=Counts)
    drain_timed_out: bool = False
    failure: Exception | None = None  # e.g. the worker died during the traffic


@dataclass(frozen=True, slots=True)
class TrafficPlan:
    stages: Sequence[Stage]
    seed: int
    regression_path_group: str | None
    rate: float
    versions: tuple[str, str]  # (stable, canary)
    funnel: FunnelTraffic | None = None  # users walking the playground funnel

    @property
    def duration(self) -> float:
        return self.stages[-1].end if self.stages else 0.0


async def drive(
    sender: KafkaSender,
    plan: TrafficPlan,
    *,
    probe: Callable[[], Counts],
    check_worker: Callable[[], None],
    status: StatusLine,
) -> TrafficResult:
    """Send the rollout, then wait until the worker has finished it; see the module doc.

    ``check_worker`` raises (EmbeddedServiceError) once the worker is gone.
    """
    loop = asyncio.get_running_loop()
    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, sender.request_stop)
            installed.append(signum)
    result = TrafficResult()
    try:
        await sender.start()
        try:
            await _rollout(sender, plan, probe, check_worker, status, result)
        finally:
            await sender.close(timeout=10.0)
            status.clear()
        if result.failure is not None:
            raise result.failure
        result.produced = sender.stats.messages_acked_total
        result.failed = sender.stats.errors
        result.interrupted = sender.stop_requested.is_set()
        if not result.interrupted:
            await _drain(sender.stop_requested, probe, check_worker, status, result)
            result.interrupted = sender.stop_requested.is_set()
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        status.clear()
    return result


async def _rollout(
    sender: KafkaSender,
    plan: TrafficPlan,
    probe: Callable[[], Counts],
    check_worker: Callable[[], None],
    status: StatusLine,
    result: TrafficResult,
) -> None:
    started = time.monotonic()
    monitor = asyncio.create_task(
        _monitor(sender, plan, probe, check_worker, status, started, result)
    )
    try:
        for stage in plan.stages:
            status.message(
                f"stage {stage.index + 1}/{len(plan.stages)}: canary share {stage.label} "
                f"for {stage.seconds:.1f} s"
            )
            values = synthetic_values(
                None,
                plan.seed + stage.index,
                stage.canary_share,
                plan.regression_path_group,
                versions=plan.versions,
                funnel=plan.funnel,
            )
            source = iterate(chunked(values, synthetic_chunk_size(plan.rate)))
            start_ns = time.time_ns()
            try:
                await sender.send(source, deadline=started + stage.end)
            finally:
                await source.aclose()
            result.windows.append(Window(stage.label, stage.canary_share, start_ns, time.time_ns()))
            if sender.stop_requested.is_set():
                return
    finally:
        monitor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await monitor


async def _monitor(
    sender: KafkaSender,
    plan: TrafficPlan,
    probe: Callable[[], Counts],
    check_worker: Callable[[], None],
    status: StatusLine,
    started: float,
    result: TrafficResult,
) -> None:
    last_time, last_sent = started, 0
    while True:
        await asyncio.sleep(POLL_INTERVAL)
        try:
            check_worker()
        except Exception as exc:  # no point sending more: stop and report it
            result.failure = exc
            sender.request_stop()
            return
        counts = await asyncio.to_thread(probe)
        now = time.monotonic()
        sent = sender.stats.messages_acked_total
        rate = (sent - last_sent) / (now - last_time) if now > last_time else 0.0
        last_time, last_sent = now, sent
        elapsed = now - started
        line = traffic_line(
            stage_at(plan.stages, elapsed),
            len(plan.stages),
            min(elapsed, plan.duration),
            plan.duration,
            sent,
            rate,
            counts,
        )
        status.update(line, now)


async def _drain(
    stop: asyncio.Event,
    probe: Callable[[], Counts],
    check_worker: Callable[[], None],
    status: StatusLine,
    result: TrafficResult,
) -> None:
    """Wait until the worker consumed everything, then until the spans stop arriving."""
    started = time.monotonic()
    produced = result.produced
    while not stop.is_set():
        counts = await asyncio.to_thread(probe)
        result.counts = counts
        now = time.monotonic()
        status.update(drain_line(produced, counts, now - started), now)
        if drained(produced, counts):
            break
        check_worker()
        if now - started > DRAIN_TIMEOUT:
            result.drain_timed_out = True
            status.message(
                f"the worker did not finish within {format_duration(DRAIN_TIMEOUT)}; "
                "summarising what was indexed so far"
            )
            return
        await asyncio.sleep(POLL_INTERVAL)
    # Spans leave the worker in batches after the documents: wait until they stop coming.
    spans_started = last_change = time.monotonic()
    last_spans = -1
    while not stop.is_set():
        counts = await asyncio.to_thread(probe)
        result.counts = counts
        now = time.monotonic()
        status.update(drain_line(produced, counts, now - started), now)
        expected = (counts.consumed or 0) - (counts.dead_lettered or 0)
        if counts.spans != last_spans:
            last_spans, last_change = counts.spans, now
        if counts.spans >= expected:
            return
        if now - last_change >= SPAN_SETTLE or now - spans_started >= SPAN_TIMEOUT:
            return
        await asyncio.sleep(POLL_INTERVAL / 2)
