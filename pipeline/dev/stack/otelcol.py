"""The OpenTelemetry Collector for the peer benchmark: built once with the Collector Builder.

Build
    The Collector Builder (OCB, ``go.opentelemetry.io/collector/cmd/builder``) is
    installed from the Go module proxy into ``<cache>/otelcol-<release>/ocb``; it
    generates a collector from :func:`builder_manifest` (the components in
    :data:`COMPONENTS`, every collector module at one release) and compiles it with
    ``CGO_ENABLED=0`` into ``<cache>/otelcol-<release>/otelcol-grayscope``. A second
    call finds the binary and builds nothing (Go's module and build caches keep the
    sources and objects too). A lock file serialises concurrent builders.

    The release is **v0.148.0** (core v1.54.0), not the newer v0.161.0 the
    transform/attributes/filter processors also resolve at: the GeoIP processor is
    served at v0.148.0 only (v0.149.0-v0.165.1 answer 404, older ones 403), and
    every module must be at one release. The contrib OpenSearch exporter is served
    at none of those releases (v0.130.0 is the newest that answers), so documents
    go through the Elasticsearch exporter, which speaks the same ``_bulk`` API; it
    refuses a server that does not answer ``X-Elastic-Product: Elasticsearch``, so
    the build adds ``elasticproduct`` (``recipes/otelcol/elasticproduct``), a
    40-line client extension that sets that response header and does nothing else.

Run
    :class:`OtelCollector` runs the binary with a config file (the collector
    expands ``${env:NAME}`` in it, so a config kept in the repository takes its
    endpoints from the environment) and waits until its own metrics answer.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline.dev.stack.process import (
    LOOPBACK,
    ManagedProcess,
    ProcessService,
    build_once,
    http_ok,
)
from pipeline.errors import ServiceError

log = logging.getLogger(__name__)

SERVICE = "otelcol"
#: The collector release every module is pinned to (contrib and core ``v0.x``) ...
RELEASE = "0.148.0"
#: ... and the core's stable ``v1.x`` modules of the same release.
CORE_STABLE = "1.54.0"
BUILDER_MODULE = "go.opentelemetry.io/collector/cmd/builder"
BINARY_NAME = "otelcol-grayscope"
RECIPE = Path(__file__).parent / "recipes" / SERVICE
#: The local module the build adds (see the module doc); copied into the build folder.
PRODUCT_MARKER = "elasticproduct"
PRODUCT_MARKER_MODULE = "grayscope.invalid/otelcol/elasticproduct"
BUILD_PARALLELISM = max(1, min(4, os.cpu_count() or 1))

_CONTRIB = "github.com/open-telemetry/opentelemetry-collector-contrib"
_CORE = "go.opentelemetry.io/collector"


@dataclass(frozen=True, slots=True)
class Component:
    kind: str  # receivers, processors, exporters, extensions, providers
    module: str
    version: str


#: What the collector is built with: the contrib components closest to grayscope's job.
COMPONENTS: tuple[Component, ...] = (
    Component("receivers", f"{_CONTRIB}/receiver/kafkareceiver", RELEASE),
    Component("processors", f"{_CONTRIB}/processor/transformprocessor", RELEASE),
    Component("processors", f"{_CONTRIB}/processor/geoipprocessor", RELEASE),
    Component("processors", f"{_CORE}/processor/batchprocessor", RELEASE),
    Component("exporters", f"{_CONTRIB}/exporter/elasticsearchexporter", RELEASE),
    Component("exporters", f"{_CORE}/exporter/otlpexporter", RELEASE),
    Component("exporters", f"{_CORE}/exporter/debugexporter", RELEASE),
    Component("providers", f"{_CORE}/confmap/provider/envprovider", CORE_STABLE),
    Component("providers", f"{_CORE}/confmap/provider/fileprovider", CORE_STABLE),
)


def otelcol_binary_path(cache_dir: Path) -> Path:
    return cache_dir / f"{SERVICE}-{RELEASE}" / BINARY_NAME


def builder_manifest(output_dir: Path, marker_dir: Path) -> str:
    """The builder's config (YAML): :data:`COMPONENTS` plus the local ``elasticproduct``.

    ``marker_dir`` is the folder holding the ``elasticproduct`` module (the builder
    adds a ``replace`` to it).
    """
    lines = [
        "dist:",
        f"  name: {BINARY_NAME}",
        "  description: OpenTelemetry Collector for the grayscope peer benchmark",
        f"  version: {RELEASE}",
        f"  output_path: {output_dir}",
    ]
    kinds = ("receivers", "processors", "exporters", "extensions", "providers")
    for kind in kinds:
        lines.append(f"{kind}:")
        for component in COMPONENTS:
            if component.kind == kind:
                lines.append(f"  - gomod: {component.module} v{component.version}")
        if kind == "extensions":
            lines.append(f"  - gomod: {PRODUCT_MARKER_MODULE} v0.0.0")
            lines.append(f"    path: {marker_dir}")
    return "\n".join(lines) + "\n"


def build_otelcol(cache_dir: Path, *, go: str = "go") -> Path:
    """The collector binary in the cache; built with Go the first time (minutes)."""
    binary = otelcol_binary_path(cache_dir)

    def build(go_path: str) -> None:
        started = time.monotonic()
        log.warning("building the OpenTelemetry Collector %s (first run only, minutes)", RELEASE)
        env = _go_env(go_path)
        builder = _install_builder(go_path, binary.parent, env)
        _build_collector(builder, binary.parent, binary, env)
        log.warning("built %s in %.0f s", binary, time.monotonic() - started)

    return build_once(binary, "the OpenTelemetry Collector", go, build)


def _go_env(go_path: str) -> dict[str, str]:
    return {
        **os.environ,
        "CGO_ENABLED": "0",
        "GOTOOLCHAIN": "local",  # the machine's Go; no toolchain download
        "GOFLAGS": f"-p={BUILD_PARALLELISM}",
        "PATH": f"{Path(go_path).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def _run(argv: list[str], cwd: Path, env: Mapping[str, str], what: str) -> None:
    with tempfile.TemporaryFile() as output:
        result = subprocess.run(
            argv, cwd=cwd, env=dict(env), stdout=output, stderr=subprocess.STDOUT, check=False
        )
        if result.returncode != 0:
            output.seek(0)
            tail = output.read().decode("utf-8", "replace")[-3000:]
            raise ServiceError(f"{what} failed ({' '.join(argv)}):\n{tail}")


def _install_builder(go_path: str, home: Path, env: Mapping[str, str]) -> Path:
    builder = home / "ocb"
    if builder.exists():
        return builder
    staging = Path(tempfile.mkdtemp(prefix="ocb-", dir=home))
    try:
        _run(
            [go_path, "install", f"{BUILDER_MODULE}@v{RELEASE}"],
            home,
            {**env, "GOBIN": str(staging)},
            "installing the Collector Builder",
        )
        (staging / "builder").replace(builder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return builder


def _build_collector(builder: Path, home: Path, binary: Path, env: Mapping[str, str]) -> None:
    # A fresh folder per build: the builder writes go.mod/go.sum/sources there and
    # the local module's copy (its go.sum may be completed by the build).
    work = Path(tempfile.mkdtemp(prefix="build-", dir=home))
    try:
        marker = work / PRODUCT_MARKER
        shutil.copytree(RECIPE / PRODUCT_MARKER, marker)
        output = work / "dist"
        manifest = work / "manifest.yaml"
        manifest.write_text(builder_manifest(output, marker))
        _run([str(builder), "--config", str(manifest)], work, env, "building the collector")
        (output / BINARY_NAME).replace(binary)  # same filesystem: atomic
    finally:
        shutil.rmtree(work, ignore_errors=True)


class OtelCollector(ProcessService):
    """One collector process: ``binary --config file:<config>`` with ``env`` added.

    Ready when its own metrics (Prometheus pull on ``metrics_port``, which the
    config must set up) answer.
    """

    def __init__(
        self,
        binary: Path,
        config: Path,
        data_dir: Path,
        *,
        metrics_port: int,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        self.binary = binary
        self.config = config.resolve()  # the process runs in data_dir
        self.data_dir = data_dir
        self.metrics_port = metrics_port
        self.env = dict(env or {})
        self.process = ManagedProcess(
            SERVICE,
            [str(self.binary), "--config", f"file:{self.config}"],
            log_path=self.log_path,
            ready=lambda: http_ok(self.metrics_url),
            cwd=self.data_dir,
            env=self.env,
            startup_timeout=startup_timeout,
            stop_grace=15.0,
        )

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.metrics_port}/metrics"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "otelcol.log"

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.running

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def log_tail(self) -> str:
        return self.process.log_tail()


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.dev.stack.otelcol build``: build if needed, print the binary's path.

    The cache is ``GRAYSCOPE_CACHE_DIR`` (default ``${XDG_CACHE_HOME:-~/.cache}/grayscope``).
    """
    import argparse

    from pipeline.config import StackSettings

    parser = argparse.ArgumentParser(prog="python -m pipeline.dev.stack.otelcol")
    parser.add_argument("command", choices=["build", "manifest"])
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cache_dir = args.cache_dir or Path(StackSettings.model_validate({}).cache_dir)
    if args.command == "manifest":
        home = otelcol_binary_path(cache_dir).parent
        print(builder_manifest(home / "dist", RECIPE / PRODUCT_MARKER), end="")
        return 0
    try:
        print(build_otelcol(cache_dir))
    except ServiceError as exc:
        print(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
