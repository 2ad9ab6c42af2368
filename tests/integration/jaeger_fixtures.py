"""Jaeger fixtures (registered by ``conftest.py``): real Jaeger v2 processes.

- ``jaeger`` (session): one all-in-one Jaeger (memory store, OTLP receivers,
  query API) for the run. Tests isolate themselves by unique gray ids and
  service names, never by restarting it.
- ``jaeger_relay`` (session): a second Jaeger binary configured as an OTLP →
  OTLP relay into ``jaeger``, the place of the OTel Collector users run in
  front of Jaeger.
- ``jaeger_query``: the query API client bound to ``jaeger``.
- ``paused(server)`` (a context manager, not a fixture): the process stopped with
  SIGSTOP — it accepts bytes on its sockets and answers nothing — until the block
  ends (SIGCONT, always: the server is used again after).

The binary is built into the service cache the first time (``make services``,
a prerequisite of ``make test``, does it ahead of the suite; ``make jaeger`` only that).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pipeline.config import StackSettings
from pipeline.dev.stack.jaeger import JaegerQuery, JaegerServer, build_jaeger
from tests.oracles.otlp_reference import SpanData


@pytest.fixture(scope="session")
def jaeger_binary(stack_settings: StackSettings) -> Path:
    return build_jaeger(Path(stack_settings.cache_dir))


@pytest.fixture(scope="session")
def jaeger(jaeger_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JaegerServer]:
    with JaegerServer(jaeger_binary, tmp_path_factory.mktemp("jaeger")).start() as server:
        yield server


@pytest.fixture(scope="session")
def jaeger_relay(
    jaeger_binary: Path, jaeger: JaegerServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[JaegerServer]:
    relay = JaegerServer(
        jaeger_binary, tmp_path_factory.mktemp("jaeger-relay"), upstream=jaeger.otlp_grpc_target
    )
    with relay.start():
        yield relay


@pytest.fixture
def jaeger_query(jaeger: JaegerServer) -> JaegerQuery:
    return JaegerQuery(jaeger.query_url)


@contextmanager
def paused(server: JaegerServer) -> Iterator[None]:
    """Jaeger stopped (SIGSTOP): it accepts bytes, answers nothing, until resumed."""
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)  # always: the server is used again after the block


def found_in_jaeger(
    query: JaegerQuery, service: str, gray_id: str, data: list[SpanData], expected: int
) -> set[str]:
    """Span ids of ``data``'s time range that Jaeger's tag search (``gray.id``) finds,
    polled until ``expected`` show up (or 20 s)."""
    start_ns = min(s.start_ns for s in data) - 1_000_000_000
    end_ns = max(s.end_ns for s in data) + 1_000_000_000
    deadline = time.monotonic() + 20
    while True:
        spans = query.find_spans(
            service, {"gray.id": gray_id}, start_ns=start_ns, end_ns=end_ns, limit=len(data) * 2
        )
        ids = {span["span_id"] for span in spans}
        if len(ids) >= expected or time.monotonic() > deadline:
            return ids
        time.sleep(0.2)


def unique_span_names(prefix: str) -> tuple[str, str]:
    """(service name, gray id) of one test's spans, unique to it: ``{prefix}-{hex}.test``
    and ``{prefix}{hex}`` (a gray id of letters and digits, as the extractors take)."""
    tag = uuid.uuid4().hex[:8]
    return f"{prefix}-{tag}.test", f"{prefix}{tag}"
