"""An in-memory OTLP trace receiver for the tests and ``grayscope demo``.

It serves OTLP/gRPC (``TraceService/Export``) and OTLP/HTTP (``POST
/v1/traces``, protobuf or JSON, optionally gzip) on free ports of 127.0.0.1,
from a background thread with its own event loop, so synchronous fixtures,
async tests and a worker in another process can all talk to it. Received
spans are kept as plain dicts (``pipeline.dev.otlp_decode.request_to_dicts``):
all of them, or only the newest ``keep`` (a long demo must not grow without
bound), or none with ``keep=0`` (benchmarks: requests are decoded and their
spans counted, ``received``).
``GET /api/spans?tag=gray.id:abc`` returns them as JSON for other processes,
like Jaeger's tag search.

For outage tests: ``down()`` closes both listeners, ``up()`` opens them again
on the same ports; ``fail(http_status=..., grpc_code=...)`` makes every
request fail with that status until ``fail()`` is called without arguments.

    with OtlpReceiver.start() as receiver:
        ... export to receiver.grpc_endpoint / receiver.http_endpoint ...
        spans = receiver.wait_for(3, timeout=10)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import logging
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any, TypeVar

import grpc
import orjson
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import (
    TraceServiceServicer,
    add_TraceServiceServicer_to_server,
)

from pipeline.dev.otlp_decode import request_to_dicts
from pipeline.sinks.otlp.grpc_status import STATUS_DETAILS_TRAILER, status_with_retry_info

log = logging.getLogger(__name__)

T = TypeVar("T")
HOST = "127.0.0.1"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
MAX_BODY = 64 * 1024 * 1024
_ID_KEYS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


class _Servicer(TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    async def Export(  # the gRPC method name
        self, request: ExportTraceServiceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ExportTraceServiceResponse:
        metadata = {str(k): str(v) for k, v in (context.invocation_metadata() or ())}
        failure = self._receiver._count_request("grpc", metadata)
        if failure is not None:
            message = "failure injected by the test receiver"
            delay = self._receiver._fail_retry_delay
            trailers = (
                ()
                if delay is None
                else (
                    (
                        STATUS_DETAILS_TRAILER,
                        status_with_retry_info(failure.value[0], message, delay),
                    ),
                )
            )
            await context.abort(failure, message, trailing_metadata=trailers)
        self._receiver._store(request)
        return ExportTraceServiceResponse()


class OtlpReceiver:
    """See the module doc. Thread-safe; all servers run on one private loop thread."""

    def __init__(self, grpc_port: int = 0, http_port: int = 0, keep: int | None = None) -> None:
        if keep is not None and keep < 0:
            raise ValueError("keep must be >= 0 (or None: keep every span)")
        self._grpc_port = grpc_port
        self._http_port = http_port
        self._cond = threading.Condition()
        # The newest ``keep`` spans as dicts (all when None; 0 = only count them).
        self._keep = keep
        self._spans: deque[dict[str, Any]] = deque(maxlen=keep)
        self._received = 0
        self._requests = {"grpc": 0, "http": 0}
        self._headers: dict[str, dict[str, str]] = {}
        self._fail_http: int | None = None
        self._fail_grpc: grpc.StatusCode | None = None
        self._fail_retry_delay: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._grpc_server: grpc.aio.Server | None = None
        self._runner: web.AppRunner | None = None

    # --- lifecycle --------------------------------------------------------
    @classmethod
    def start(cls, grpc_port: int = 0, http_port: int = 0, keep: int | None = None) -> OtlpReceiver:
        """A running receiver (ports 0 = pick free ones; ``keep``: see the module doc)."""
        receiver = cls(grpc_port, http_port, keep)
        loop = asyncio.new_event_loop()
        receiver._loop = loop
        receiver._thread = threading.Thread(
            target=receiver._run_loop, name="otlp-receiver", daemon=True
        )
        receiver._thread.start()
        try:
            receiver.up()
        except BaseException:
            receiver.stop()
            raise
        return receiver

    def _run_loop(self) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def up(self) -> None:
        """(Re)open both listeners, on the same ports as before once known."""
        self._call(self._serve())

    def down(self) -> None:
        """Close both listeners (clients see connection errors); ``up()`` reopens them."""
        self._call(self._shutdown())

    @property
    def is_up(self) -> bool:
        return self._grpc_server is not None

    def stop(self) -> None:
        """Close the listeners and end the loop thread; the received spans stay readable."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            try:
                self._call(self._shutdown())
            finally:
                loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> OtlpReceiver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("OTLP receiver is stopped")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _serve(self) -> None:
        if self._grpc_server is not None:
            return
        # No SO_REUSEPORT: a second server must not silently share our port.
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        add_TraceServiceServicer_to_server(_Servicer(self), server)
        self._grpc_port = server.add_insecure_port(f"{HOST}:{self._grpc_port}")
        await server.start()
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/v1/traces", self._http_export)
        app.router.add_get("/api/spans", self._http_spans)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, HOST, self._http_port)
            await site.start()
        except BaseException:
            await server.stop(grace=None)
            await runner.cleanup()
            raise
        self._http_port = int(runner.addresses[0][1])
        self._grpc_server, self._runner = server, runner

    async def _shutdown(self) -> None:
        server, runner = self._grpc_server, self._runner
        self._grpc_server = self._runner = None
        if server is not None:
            await server.stop(grace=None)
        if runner is not None:
            await runner.cleanup()

    # --- endpoints ----------------------------------------------------------
    @property
    def grpc_endpoint(self) -> str:
        return f"http://{HOST}:{self._grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://{HOST}:{self._http_port}/v1/traces"

    # --- failure injection ----------------------------------------------------
    def fail(
        self,
        http_status: int | None = None,
        grpc_code: grpc.StatusCode | None = None,
        *,
        retry_delay: float | None = None,
    ) -> None:
        """Fail every request with these until called again without arguments.

        ``retry_delay`` (seconds): the gRPC failure carries a google.rpc.RetryInfo in
        its status details, as a collector that may recover (a memory limiter) sends
        with RESOURCE_EXHAUSTED; the HTTP failure a ``Retry-After`` header.
        """
        with self._cond:
            self._fail_http, self._fail_grpc = http_status, grpc_code
            self._fail_retry_delay = retry_delay

    def request_count(self, protocol: str | None = None) -> int:
        """Export requests received (failed ones included), per "grpc"/"http" or in total."""
        with self._cond:
            return self._requests[protocol] if protocol else sum(self._requests.values())

    # --- received spans ---------------------------------------------------------
    def spans(self) -> list[dict[str, Any]]:
        with self._cond:
            return list(self._spans)

    def find(self, attribute: str, value: Any) -> list[dict[str, Any]]:
        """Spans whose span or resource attribute ``attribute`` equals ``value``."""
        with self._cond:
            return [s for s in self._spans if _matches(s, attribute, value)]

    @property
    def received(self) -> int:
        """Spans received since the start (or ``clear``), kept or not."""
        with self._cond:
            return self._received

    def wait_for(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The kept spans once at least ``n`` arrived; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._received < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self._received} of {n} spans received in {timeout}s")
                self._cond.wait(left)
            return list(self._spans)

    def clear(self) -> None:
        with self._cond:
            self._spans.clear()
            self._received = 0
            self._requests = dict.fromkeys(self._requests, 0)
            self._headers.clear()

    def last_headers(self, protocol: str) -> dict[str, str]:
        """Headers (HTTP) or metadata (gRPC) of the last request, keys lower case."""
        with self._cond:
            return dict(self._headers.get(protocol, {}))

    def _count_request(self, protocol: str, headers: dict[str, str]) -> Any:
        with self._cond:
            self._requests[protocol] += 1
            self._headers[protocol] = headers
            return self._fail_grpc if protocol == "grpc" else self._fail_http

    def _store(self, request: ExportTraceServiceRequest) -> None:
        if self._keep == 0:
            # Count only (benchmarks): the request was decoded, nothing is converted.
            count = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
            with self._cond:
                self._received += count
                self._cond.notify_all()
            return
        spans = request_to_dicts(request)
        with self._cond:
            self._spans.extend(spans)
            self._received += len(spans)
            self._cond.notify_all()

    # --- HTTP handlers --------------------------------------------------------------
    async def _http_export(self, request: web.Request) -> web.Response:
        failure = self._count_request("http", {k.lower(): v for k, v in request.headers.items()})
        if failure is not None:
            delay = self._fail_retry_delay
            headers = {} if delay is None else {"Retry-After": f"{delay:g}"}
            return web.Response(
                status=failure, text="failure injected by the test receiver", headers=headers
            )
        body = await request.read()
        if request.headers.get("Content-Encoding", "").lower() == "gzip":
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError):
                return web.Response(status=400, text="bad gzip body")
        content_type = request.content_type
        message = ExportTraceServiceRequest()
        try:
            if content_type == PROTOBUF:
                message.ParseFromString(body)
            elif content_type == JSON:
                json_format.ParseDict(
                    _hex_ids_to_base64(orjson.loads(body)), message, ignore_unknown_fields=True
                )
            else:
                return web.Response(status=415, text=f"use {PROTOBUF} or {JSON}")
        except (DecodeError, json_format.ParseError, orjson.JSONDecodeError, ValueError) as exc:
            return web.Response(status=400, text=f"undecodable request: {type(exc).__name__}")
        self._store(message)
        if content_type == JSON:
            return web.Response(body=b"{}", content_type=JSON)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type=PROTOBUF
        )

    async def _http_spans(self, request: web.Request) -> web.Response:
        tag = request.query.get("tag")
        if tag:
            key, _, value = tag.partition(":")
            found = [s for s in self.spans() if _matches(s, key, value, loose=True)]
        else:
            found = self.spans()
        return web.Response(body=orjson.dumps(found), content_type=JSON)


def _matches(span: dict[str, Any], attribute: str, value: Any, *, loose: bool = False) -> bool:
    for attrs in (span["attributes"], span["resource"]):
        if attribute in attrs:
            found = attrs[attribute]
            # A query string has no types: compare as text, like Jaeger's tag search.
            return str(found) == str(value) if loose else bool(found == value)
    return False


def _hex_ids_to_base64(payload: Any) -> Any:
    # OTLP/JSON writes ids as hex; protobuf's JSON mapping expects base64 for bytes.
    if not isinstance(payload, dict):
        raise ValueError("not a JSON object")
    for resource_spans in payload.get("resourceSpans") or payload.get("resource_spans") or []:
        scopes = resource_spans.get("scopeSpans") or resource_spans.get("scope_spans") or []
        for scope_spans in scopes:
            for span in scope_spans.get("spans") or []:
                for item in (span, *(span.get("links") or [])):
                    for key in _ID_KEYS:
                        if item.get(key):
                            item[key] = base64.b64encode(bytes.fromhex(item[key])).decode()
    return payload


def main(argv: list[str] | None = None) -> int:
    """Run a receiver until SIGINT/SIGTERM; prints its endpoints as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--grpc-port", type=int, default=0)
    parser.add_argument("--http-port", type=int, default=0)
    parser.add_argument(
        "--keep",
        type=int,
        default=None,
        help="keep only the newest N spans (0: only count them); default: all",
    )
    args = parser.parse_args(argv)
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    with OtlpReceiver.start(args.grpc_port, args.http_port, args.keep) as receiver:
        endpoints = {
            "grpc_endpoint": receiver.grpc_endpoint,
            "http_endpoint": receiver.http_endpoint,
        }
        sys.stdout.write(orjson.dumps(endpoints).decode() + "\n")
        sys.stdout.flush()
        stopped.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
