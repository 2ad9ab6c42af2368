"""Embedded Elasticsearch-API store: the in-memory ``osmem-server`` binary.

Used by ``grayscope demo`` and the integration tests. It speaks the
OpenSearch REST API (``GET /`` reports ``version.distribution=opensearch``,
number 3.x) and keeps everything in memory: a restart is an empty store.
For outage tests a stopped store can be started again **on the same port**,
so a worker keeps its configured URL and simply sees the store come back.

The official ``elasticsearch`` Python client 9.x sends
``application/vnd.elasticsearch+json; compatible-with=9`` media types, which
this store (like OpenSearch) answers with 406 on bulk; talk to it with plain
``application/json`` / ``application/x-ndjson``.
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Self

import orjson

from pipeline.dev.embedded.ports import ChildProcess, EmbeddedService, default_log_path
from pipeline.dev.stack.process import LOOPBACK, port_accepts
from pipeline.errors import EmbeddedServiceError, StoreHTTPError

log = logging.getLogger(__name__)


def _resolve_binary(binary: str | None) -> str:
    if binary:
        return binary
    try:
        import osmem_server
    except ImportError as exc:
        raise EmbeddedServiceError(
            "the embedded store needs the osmem-server package: pip install 'grayscope[embedded]'"
        ) from exc
    try:
        return osmem_server.resolve_binary()
    except osmem_server.OsmemError as exc:
        raise EmbeddedServiceError(f"no osmem-server binary: {exc}") from exc


def _ready_url(output: str) -> str | None:
    """The URL from osmem's JSON ready line, once it has printed one."""
    for line in output.splitlines():
        if not line.startswith("{"):
            continue
        try:
            msg = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(msg, dict) and isinstance(msg.get("url"), str):
            return str(msg["url"])
    return None


class EmbeddedStore(EmbeddedService):
    """A running osmem-server on 127.0.0.1.

    Start with :meth:`start`; the object stays valid across :meth:`stop` /
    :meth:`start_again` / :meth:`restart`, which keep the port.
    """

    def __init__(
        self,
        *,
        binary: str,
        port: int | None,
        log_path: Path,
        japanese: bool,
        startup_timeout: float,
        stop_grace: float,
    ) -> None:
        self.host = LOOPBACK
        self.binary = binary
        self.log_path = log_path
        self.japanese = japanese
        self.startup_timeout = startup_timeout
        self.stop_grace = stop_grace
        self._requested_port = port
        self.port = 0
        self._child: ChildProcess | None = None

    @classmethod
    def start(
        cls,
        port: int | None = None,
        log_path: str | Path | None = None,
        *,
        japanese: bool = False,
        binary: str | None = None,
        startup_timeout: float = 15.0,
        stop_grace: float = 5.0,
    ) -> Self:
        """Start a store (on a free port unless given) and wait until it serves ``GET /``."""
        store = cls(
            binary=_resolve_binary(binary),
            port=port,
            log_path=Path(log_path) if log_path is not None else default_log_path("store"),
            japanese=japanese,
            startup_timeout=startup_timeout,
            stop_grace=stop_grace,
        )
        store._spawn()
        return store

    kind = "store"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def address(self) -> str:
        return self.url

    def _argv(self, port: int) -> list[str]:
        # Two ways to die with us that, unlike PR_SET_PDEATHSIG, do not care
        # which thread started it: --parent-pid polling and EOF on stdin.
        argv = [
            self.binary,
            "--parent-pid",
            str(os.getpid()),
            "--addr",
            f"{self.host}:{port}",
        ]
        if not self.japanese:
            argv.append("--no-ja")
        return argv

    def _spawn(self) -> None:
        fixed = self._requested_port
        if fixed is not None and port_accepts(self.host, fixed):
            raise EmbeddedServiceError(f"port {fixed} is already in use on {self.host}")
        # Port 0 on a first start lets the server pick: no race for a port.
        child = ChildProcess(
            self._argv(fixed or 0),
            log_path=self.log_path,
            env={},
            stdin_pipe=True,
            death_signal=False,
        )
        found: list[str] = []

        def ready() -> bool:
            # The ready line comes after the bind, so the answer is ours.
            url = _ready_url(child.output())
            if url is None:
                return False
            found.append(url)
            return self._answers(url)

        try:
            child.wait_until(ready, timeout=self.startup_timeout, what="osmem-server")
        except EmbeddedServiceError:
            child.stop(self.stop_grace)
            raise
        self._child = child
        self.port = int(found[-1].rsplit(":", 1)[1])
        # Later starts reuse the port: the worker keeps its configured URL.
        self._requested_port = self.port
        log.info("embedded store ready on %s (pid %d)", self.url, child.pid)

    @staticmethod
    def _answers(url: str) -> bool:
        try:
            with urllib.request.urlopen(f"{url}/", timeout=1.0) as resp:
                return resp.status == 200
        except (OSError, ValueError):
            return False

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        ndjson: Iterable[Mapping[str, Any]] | None = None,
        timeout: float = 30.0,
    ) -> Any:
        """One REST call for tests and the demo; decoded JSON, StoreHTTPError on >= 400."""
        headers = {"Accept": "application/json"}
        data: bytes | None = None
        if ndjson is not None:
            data = b"".join(orjson.dumps(item) + b"\n" for item in ndjson)
            headers["Content-Type"] = "application/x-ndjson"
        elif body is not None:
            data = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            decoded = _decode(raw)
            raise StoreHTTPError(
                f"{method} {path}: HTTP {exc.code}", status=exc.code, body=decoded
            ) from exc
        except OSError as exc:
            raise EmbeddedServiceError(f"{method} {path}: {exc}") from exc
        return _decode(raw)


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")
