"""Jaeger v2 for the local stack and the integration tests: built once, run as a process.

Build
    Jaeger v2 is an OpenTelemetry Collector distribution written in Go. The
    binary is built from the Go module proxy through the wrapper module in
    ``recipes/jaeger`` (``go.mod``/``go.sum`` pin ``github.com/jaegertracing/jaeger``
    v1.75.0, the v1 twin tag of Jaeger v2.12.0, and mirror its ``replace`` of
    ``Shopify/sarama``, which ``go install …@version`` refuses). :func:`build_jaeger`
    runs ``CGO_ENABLED=0 go build`` into ``<cache>/jaeger-<version>/jaeger``
    once; a second call finds the binary and builds nothing (Go's module and
    build caches keep the sources and objects too). A lock file serialises
    concurrent builders (parallel test runs on one machine).

Run
    :class:`JaegerServer` writes a config file and runs the binary with
    ``--config``. Every listener is on a free loopback port, none on a Jaeger
    default (other test runs share the machine). Two modes:

    - all-in-one (``upstream=None``): OTLP gRPC + HTTP receivers → the
      in-memory trace store, and the query service (HTTP API + UI, gRPC API)
      reading it. Ready when the query API answers. No batch processor: what
      sends to it (grayscope's exporter, 512 spans a request; a relay) sends
      batches already, and re-batching them in front of a store in memory only
      cost CPU (100,000 spans in 512-span requests: 13.3-15.7 CPU µs per span
      with it, 10.0-10.9 without, three rounds each; bench/README.md, "Session 12").
    - relay (``upstream=<OTLP gRPC endpoint>``): OTLP receivers → batch → an
      ``otlp`` exporter to another Jaeger or collector; the shape of the OTel
      Collector users put in front of Jaeger. Ready when both receivers accept.

    The binary's own metrics (Prometheus pull) get a free port as well.

Search
    :class:`JaegerQuery` is a small synchronous client of the query service:
    ``GET /api/traces?service=S&tags={"gray.id":"…"}`` (the search the UI
    runs) and ``GET /api/v3/traces/{id}`` (the trace as OTLP JSON: full
    32-hex ids, span kind, status and typed attribute values).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from pipeline.dev.stack.process import (
    LOOPBACK,
    ManagedProcess,
    build_once,
    free_port,
    http_ok,
    port_accepts,
)
from pipeline.errors import ServiceError

log = logging.getLogger(__name__)

SERVICE = "jaeger"
MODULE = "github.com/jaegertracing/jaeger"
PACKAGE = f"{MODULE}/cmd/jaeger"
RECIPE = Path(__file__).parent / "recipes" / SERVICE
# Jaeger is a Go program with a large dependency tree (~2,300 packages): a cold build
# took ~600 CPU-seconds (measured: 37 min of wall time on a 2-core box shared with
# other builds; ~5 min with both cores free, by that figure). The peak is the final
# link, ~1.9 GB resident (2.3 GB max RSS over the build); each parallel compile adds
# up to a few hundred MB, so parallelism is capped.
BUILD_PARALLELISM = max(1, min(4, os.cpu_count() or 1))
START_ATTEMPTS = 3  # a free port can be taken between our pick and Jaeger's bind
# Go's GC target for the all-in-one Jaeger: its in-memory store (100,000 traces, ~500 MB
# live once full) is marked on every cycle, and with Go's default (GOGC=100: a cycle per
# heap's worth of new spans) that was ~2/3 of its CPU in the bench (14 of ~21 CPU µs a
# span, GODEBUG=gctrace=1; bench/README.md, "Session 14"). 400: a cycle per four heaps'
# worth, ~4 µs a span; the heap may grow to ~5x the live store (~3.5 GB when full, only
# the bench fills it; the tests' Jaeger holds a few thousand spans).
JAEGER_GOGC = 400


def jaeger_version() -> str:
    """The Jaeger module version the recipe pins (``1.75.0``), read from its go.mod."""
    text = (RECIPE / "go.mod").read_text()
    match = re.search(rf"^\s*{re.escape(MODULE)}\s+v(\S+)", text, re.MULTILINE)
    if match is None:
        raise ServiceError(f"{RECIPE / 'go.mod'} does not require {MODULE}")
    return match.group(1)


def jaeger_binary_path(cache_dir: Path) -> Path:
    return cache_dir / f"{SERVICE}-{jaeger_version()}" / SERVICE


def build_jaeger(cache_dir: Path, *, go: str = "go") -> Path:
    """The Jaeger binary in the cache; built with Go the first time (minutes)."""
    binary = jaeger_binary_path(cache_dir)
    return build_once(
        binary, "Jaeger for the local stack", go, lambda go_path: _go_build(go_path, binary)
    )


def _go_build(go_path: str, binary: Path) -> None:
    log.warning("building Jaeger %s with Go (first run only, takes minutes)", jaeger_version())
    started = time.monotonic()
    partial = binary.with_name(f".{binary.name}.partial")
    env = {
        **os.environ,
        "CGO_ENABLED": "0",
        # The recipe's go.mod and go.sum are the whole truth: no edits, no other
        # toolchain download (the go directive is older than any supported Go).
        "GOFLAGS": "-mod=readonly",
        "GOTOOLCHAIN": "local",
    }
    argv = [
        go_path, "build", "-trimpath", f"-p={BUILD_PARALLELISM}",
        "-o", str(partial), PACKAGE,
    ]  # fmt: skip
    with tempfile.TemporaryFile() as output:
        result = subprocess.run(
            argv, cwd=RECIPE, env=env, stdout=output, stderr=subprocess.STDOUT, check=False
        )
        if result.returncode != 0:
            output.seek(0)
            tail = output.read().decode("utf-8", "replace")[-3000:]
            partial.unlink(missing_ok=True)
            raise ServiceError(f"building Jaeger failed ({' '.join(argv)}):\n{tail}")
    partial.replace(binary)  # atomic: a half-written binary is never found
    log.warning("built %s in %.0f s", binary, time.monotonic() - started)


@dataclass(frozen=True, slots=True)
class JaegerPorts:
    otlp_grpc: int
    otlp_http: int
    metrics: int
    query_http: int = 0  # all-in-one only
    query_grpc: int = 0

    @classmethod
    def pick(cls, *, query: bool, wanted: Mapping[str, int] | None = None) -> JaegerPorts:
        """Free loopback ports, distinct from each other; ``wanted`` ones (by field name,
        e.g. a previous run's, 0 = any) where given."""
        names = ["otlp_grpc", "otlp_http", "metrics"]
        if query:
            names += ["query_http", "query_grpc"]
        wanted = wanted or {}
        chosen: dict[str, int] = {}
        for name in names:
            port = int(wanted.get(name, 0))
            while not port or port in chosen.values():
                port = free_port()
            chosen[name] = port
        return cls(**chosen)

    def as_dict(self) -> dict[str, int]:
        return {name: port for name, port in asdict(self).items() if port}


def jaeger_config(ports: JaegerPorts, upstream: str | None = None) -> dict[str, Any]:
    """The collector config: all-in-one with ``upstream=None``, else an OTLP relay.

    ``upstream`` is an OTLP/gRPC target (``host:port``). Written as JSON, which
    the collector's YAML loader reads as it is.
    """

    def listen(port: int) -> dict[str, str]:
        return {"endpoint": f"{LOOPBACK}:{port}"}

    receivers = {"otlp": {"protocols": {"grpc": listen(ports.otlp_grpc),
                                        "http": listen(ports.otlp_http)}}}  # fmt: skip
    telemetry = {
        "resource": {"service.name": "jaeger" if upstream is None else "jaeger-relay"},
        "logs": {"level": "info"},
        # Without readers the collector's own metrics would take 8888 on every address.
        "metrics": {
            "level": "basic",
            "readers": [
                {"pull": {"exporter": {"prometheus": {"host": LOOPBACK, "port": ports.metrics}}}}
            ],
        },
    }
    if upstream is not None:
        return {
            "receivers": receivers,
            "processors": {"batch": {"timeout": "200ms"}},
            "exporters": {
                "otlp": {
                    "endpoint": upstream,
                    "tls": {"insecure": True},
                    "retry_on_failure": {"enabled": True, "max_elapsed_time": "60s"},
                }
            },
            "service": {
                "telemetry": telemetry,
                "pipelines": {
                    "traces": {
                        "receivers": ["otlp"],
                        "processors": ["batch"],
                        "exporters": ["otlp"],
                    }
                },
            },
        }
    return {
        "extensions": {
            "jaeger_storage": {"backends": {"memstore": {"memory": {"max_traces": 100_000}}}},
            "jaeger_query": {
                "storage": {"traces": "memstore"},
                "http": listen(ports.query_http),
                "grpc": listen(ports.query_grpc),
                # The query service would trace its own requests: noise under "jaeger".
                "enable_tracing": False,
            },
        },
        "receivers": receivers,
        "exporters": {"jaeger_storage_exporter": {"trace_storage": "memstore"}},
        "service": {
            "extensions": ["jaeger_storage", "jaeger_query"],
            "telemetry": telemetry,
            "pipelines": {
                "traces": {
                    "receivers": ["otlp"],
                    "exporters": ["jaeger_storage_exporter"],
                }
            },
        },
    }


class JaegerServer:
    """One Jaeger process (all-in-one, or a relay with ``upstream``); see the module doc.

    ``with JaegerServer(binary, data_dir).start() as jaeger: jaeger.query_url ...``
    """

    def __init__(
        self,
        binary: Path,
        data_dir: Path,
        *,
        upstream: str | None = None,
        name: str | None = None,
        ports: Mapping[str, int] | None = None,
        startup_timeout: float = 60.0,
        detached: bool = False,
    ) -> None:
        self.binary = binary
        self.wanted_ports = dict(ports or {})
        self.data_dir = data_dir
        self.upstream = upstream
        self.name = name or ("jaeger" if upstream is None else "jaeger-relay")
        self.startup_timeout = startup_timeout
        self.detached = detached
        self.ports: JaegerPorts | None = None
        self._process: ManagedProcess | None = None

    @property
    def config_path(self) -> Path:
        return self.data_dir / f"{self.name}.json"

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    def _ports(self) -> JaegerPorts:
        if self.ports is None:
            raise ServiceError(f"{self.name} has not been started")
        return self.ports

    @property
    def otlp_grpc_endpoint(self) -> str:
        """For ``GRAYSCOPE_OTLP_ENDPOINT`` (OTLP/gRPC)."""
        return f"http://{LOOPBACK}:{self._ports().otlp_grpc}"

    @property
    def otlp_grpc_target(self) -> str:
        """``host:port`` of the OTLP/gRPC receiver, for another collector's exporter."""
        return f"{LOOPBACK}:{self._ports().otlp_grpc}"

    @property
    def otlp_http_endpoint(self) -> str:
        """For ``GRAYSCOPE_OTLP_ENDPOINT`` (OTLP/HTTP with protobuf)."""
        return f"http://{LOOPBACK}:{self._ports().otlp_http}/v1/traces"

    @property
    def query_url(self) -> str:
        """The query service's base URL (``GRAYSCOPE_JAEGER_URL``; the UI is there too)."""
        if self.upstream is not None:
            raise ServiceError(f"{self.name} is a relay: it has no query service")
        return f"http://{LOOPBACK}:{self._ports().query_http}"

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self._ports().metrics}/metrics"

    @property
    def process(self) -> ManagedProcess | None:
        """The running process (None before ``start``)."""
        return self._process

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    def _ready(self) -> bool:
        ports = self._ports()
        for port in (ports.otlp_grpc, ports.otlp_http):
            if not port_accepts(LOOPBACK, port):
                return False
        return self.upstream is not None or http_ok(f"{self.query_url}/api/services")

    def start(self) -> Self:
        """Start on free ports: the ``ports`` asked for, else fresh ones (fresh ones are
        picked again when one was taken before Jaeger bound it)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, START_ATTEMPTS + 1):
            wanted = self.wanted_ports if attempt == 1 else {}
            self.ports = JaegerPorts.pick(query=self.upstream is None, wanted=wanted)
            self.config_path.write_text(json.dumps(jaeger_config(self.ports, self.upstream)))
            self._process = ManagedProcess(
                self.name,
                [str(self.binary), "--config", f"file:{self.config_path}"],
                env={"GOGC": str(JAEGER_GOGC)} if self.upstream is None else None,
                log_path=self.log_path,
                ready=self._ready,
                cwd=self.data_dir,
                startup_timeout=self.startup_timeout,
                stop_grace=10.0,
                detached=self.detached,
            )
            try:
                self._process.start()
                return self
            except ServiceError:
                lost_race = "address already in use" in self._process.output().lower()
                if not lost_race or attempt == START_ATTEMPTS:
                    raise
                log.info("%s: a port was taken before Jaeger bound it; new ports", self.name)
        raise AssertionError("unreachable")

    def restart(self) -> Self:
        """Stop and start on the same ports (the in-memory store starts empty)."""
        if self._process is None:
            raise ServiceError(f"{self.name} has not been started")
        self._process.restart()
        return self

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()

    def log_tail(self) -> str:
        return self._process.log_tail() if self._process is not None else ""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class JaegerQuery:
    """The query service's HTTP API (``base_url`` = ``GRAYSCOPE_JAEGER_URL``)."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        url = f"{self.base_url}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise ServiceError(f"Jaeger query {path}: HTTP {exc.code}") from exc
        except (OSError, ValueError) as exc:
            raise ServiceError(f"Jaeger query {path}: {exc}") from exc

    def services(self) -> list[str]:
        body = self._get("/api/services")
        return list(body.get("data") or []) if body else []

    def find_traces(
        self,
        service: str,
        tags: Mapping[str, str],
        *,
        start_ns: int,
        end_ns: int,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Traces with a span of ``service`` carrying every tag; the v1 JSON model.

        ``start_ns``/``end_ns`` bound the spans' start times (the log's request
        times, which may be long past: the API's default look-back is not used).
        """
        body = self._get(
            "/api/traces",
            {
                "service": service,
                "tags": json.dumps(dict(tags)),
                "start": str(start_ns // 1000),
                "end": str(end_ns // 1000 + 1),
                "limit": str(limit),
            },
        )
        return list(body.get("data") or []) if body else []

    def find_spans(
        self,
        service: str,
        tags: Mapping[str, str],
        *,
        start_ns: int,
        end_ns: int,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """:meth:`find_traces`, its spans as :func:`spans_from_v1` dicts."""
        return spans_from_v1(
            self.find_traces(service, tags, start_ns=start_ns, end_ns=end_ns, limit=limit)
        )

    def get_trace_otlp(self, trace_id: str, *, raw: bool = True) -> dict[str, Any] | None:
        """One trace as OTLP JSON (``resourceSpans``), or None when Jaeger has none.

        ``raw``: as stored, without the query service's adjustments (clock skew,
        which adds ``@jaeger@warnings`` to a span whose parent is not in the trace:
        the caller's span of a logged request never is).
        """
        params = {"raw_traces": "true"} if raw else None
        body = self._get(f"/api/v3/traces/{trace_id}", params)
        if not body:
            return None
        result = body.get("result", body)
        return dict(result) if isinstance(result, dict) else None


#: v1 tags that carry the OTLP span's own fields, not its attributes.
_SPAN_FIELD_TAGS = frozenset(
    {"span.kind", "otel.status_code", "otel.status_description", "error",
     "otel.scope.name", "otel.scope.version", "otel.library.name", "otel.library.version"}
)  # fmt: skip


def spans_from_v1(traces: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The spans of ``/api/traces`` answers (Jaeger's v1 JSON model) in the shape
    :func:`pipeline.dev.otlp_decode.request_to_dicts` gives received spans: lower-hex
    ids, epoch-ns times, ``STATUS_CODE_*`` / ``SPAN_KIND_*`` names, typed attributes,
    the process's tags (and ``service.name``) as the resource."""
    out: list[dict[str, Any]] = []
    for trace in traces:
        processes: Mapping[str, Any] = trace.get("processes") or {}
        for span in trace.get("spans") or []:
            tags = {tag["key"]: tag.get("value") for tag in span.get("tags") or []}
            process = processes.get(span.get("processID", "")) or {}
            resource = {tag["key"]: tag.get("value") for tag in process.get("tags") or []}
            if process.get("serviceName"):
                resource["service.name"] = process["serviceName"]
            parents = [
                ref["spanID"]
                for ref in span.get("references") or []
                if ref.get("refType") == "CHILD_OF"
            ]
            start_ns = int(span.get("startTime") or 0) * 1000
            status = str(tags.get("otel.status_code") or "UNSET").upper()
            kind = str(tags.get("span.kind") or "unspecified").upper()
            out.append(
                {
                    # v1 writes a 64-bit trace id (high half zero) without the zeros.
                    "trace_id": str(span.get("traceID", "")).zfill(32),
                    "span_id": str(span.get("spanID", "")).zfill(16),
                    "parent_span_id": parents[0] if parents else None,
                    "name": span.get("operationName", ""),
                    "kind": f"SPAN_KIND_{kind}",
                    "start_ns": start_ns,
                    "end_ns": start_ns + int(span.get("duration") or 0) * 1000,
                    "status_code": f"STATUS_CODE_{status}",
                    "status_message": str(tags.get("otel.status_description") or ""),
                    "attributes": {k: v for k, v in tags.items() if k not in _SPAN_FIELD_TAGS},
                    "resource": resource,
                    "scope": str(
                        tags.get("otel.scope.name") or tags.get("otel.library.name") or ""
                    ),
                }
            )
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.dev.stack.jaeger build``: build if needed, print the binary's path.

    The cache is ``GRAYSCOPE_CACHE_DIR`` (default ``${XDG_CACHE_HOME:-~/.cache}/grayscope``).
    """
    import argparse

    from pipeline.config import StackSettings

    parser = argparse.ArgumentParser(prog="python -m pipeline.dev.stack.jaeger")
    parser.add_argument("command", choices=["build"])
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        print(build_jaeger(args.cache_dir or Path(StackSettings.model_validate({}).cache_dir)))
    except ServiceError as exc:
        print(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
