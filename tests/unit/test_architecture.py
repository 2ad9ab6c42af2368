"""The folders are the architecture: who may import whom (run by ``make lint`` too).

- ``pipeline/core/`` (the pure core, exactly the compiled set) imports nothing
  outside itself but the schemas, the error tree, the standard library and orjson: no Kafka,
  Faust, HTTP or gRPC client, no config, no clock source of its own;
- ``pipeline/sinks/`` import the core, never the worker, the commands or the
  development tooling;
- ``pipeline/canary/`` (the pure canary analysis; ``client`` is the one
  module that talks HTTP, for ``grayscope canary status``) imports no Kafka,
  Faust or store client;
- nothing imports the commands (``pipeline/commands/``) but the commands and
  the development tooling, and nothing imports the development tooling
  (``pipeline/dev/``) but the commands and itself;
- ``agents/`` (the worker) never imports the commands or the development tooling;
- there are no import cycles between modules (imports at module level).

Imports inside functions count too (a lazy import is still a dependency), except
for the cycle check, where only module-level imports make a cycle at import time.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import native

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipeline", "agents", "schemas")
PROJECT = (*PACKAGES, "kibana", "tests", "bench")

# Third-party modules the pure core may use: serialisation only.
CORE_THIRD_PARTY = {"orjson"}
IO_LIBRARIES = {
    "aiokafka",
    "faust",
    "mode",
    "elasticsearch",
    "aiohttp",
    "grpc",
    "urllib.request",
    "http",
    "socket",
    "asyncio",
    "httpx",
    "requests",
    "kafka",
    "opentelemetry",
    "geoip2",
    "maxminddb",
    "subprocess",
    "ssl",
    "selectors",
}
# What the core may use of ``socket``: address text <-> bytes, no I/O.
CORE_SOCKET_NAMES = {"inet_pton", "inet_ntop", "AF_INET", "AF_INET6"}


def io_library(imported: str) -> bool:
    return any(within(imported, library) for library in IO_LIBRARIES)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            out[module_name(path)] = path
    return out


MODULES = package_modules()


def imports(path: Path, *, top_level_only: bool = False) -> Iterator[str]:
    """Absolute module names ``path`` imports."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base == "__future__":
                continue
            # ``from package import submodule`` depends on the submodule (and on the
            # package's __init__ only through it); ``from module import name`` on module.
            submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
            yield from submodules
            if len(submodules) < len(node.names):
                yield base


def project_imports(path: Path, **kwargs: bool) -> set[str]:
    """The project modules (not names inside them) that ``path`` imports."""
    found = set()
    for name in imports(path, **kwargs):
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name and name != module_name(path):
            found.add(name)
    return found


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_the_compiled_set_is_the_core_folder() -> None:
    core = sorted(
        name
        for name, path in MODULES.items()
        if within(name, "pipeline.core") and path.name != "__init__.py"
    )
    assert list(native.NATIVE_MODULES) == core
    assert core, "no core modules found"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if within(n, "pipeline.core")))
def test_core_imports_only_the_core_schemas_and_stdlib(name: str) -> None:
    for imported in imports(MODULES[name]):
        top = imported.split(".")[0]
        if top in ("pipeline", "agents"):
            # The error tree is plain exception classes (RejectedInput is raised in the core).
            allowed = within(imported, "pipeline.core") or within(imported, "pipeline.errors")
            assert allowed, f"{name} imports {imported}"
        elif top in sys.stdlib_module_names:
            if imported == "socket":
                used = {
                    node.attr
                    for node in ast.walk(ast.parse(MODULES[name].read_text()))
                    if isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "socket"
                }
                assert used <= CORE_SOCKET_NAMES, f"{name} uses socket.{used - CORE_SOCKET_NAMES}"
            else:
                assert not io_library(imported), f"{name} imports {imported} (I/O)"
        else:
            assert top == "schemas" or top in CORE_THIRD_PARTY, f"{name} imports {imported}"


def test_sinks_import_the_core_not_the_worker_commands_or_dev_tooling() -> None:
    for name, path in MODULES.items():
        if within(name, "pipeline.sinks"):
            for imported in project_imports(path):
                assert not within(imported, "agents"), f"{name} imports {imported}"
                assert not within(imported, "pipeline.commands"), f"{name} imports {imported}"
                assert not within(imported, "pipeline.dev"), f"{name} imports {imported}"
                assert not within(imported, "pipeline.canary"), f"{name} imports {imported}"


def test_canary_analysis_is_pure_but_its_status_client() -> None:
    for name, path in MODULES.items():
        if within(name, "pipeline.canary") and name != "pipeline.canary.client":
            for imported in imports(path):
                assert not io_library(imported), f"{name} imports {imported}"
            for imported in project_imports(path):
                assert not within(imported, "pipeline.sinks"), f"{name} imports {imported}"
                assert not within(imported, "agents"), f"{name} imports {imported}"


def test_nothing_imports_the_commands_or_the_dev_tooling() -> None:
    for name, path in MODULES.items():
        if within(name, "pipeline.commands") or within(name, "pipeline.dev"):
            continue
        if name in ("pipeline", "pipeline.native"):
            continue
        for imported in project_imports(path):
            assert not within(imported, "pipeline.commands"), f"{name} imports {imported}"
            assert not within(imported, "pipeline.dev"), f"{name} imports {imported}"


def test_dev_tooling_imports_no_command_but_to_start_one() -> None:
    # The demo runs commands as child processes (``python -m pipeline.commands.main``),
    # never by importing them.
    for name, path in MODULES.items():
        if within(name, "pipeline.dev"):
            for imported in project_imports(path):
                assert not within(imported, "pipeline.commands") or imported in (
                    "pipeline.commands.produce",  # the traffic it sends is the produce command's
                ), f"{name} imports {imported}"


def test_no_import_cycles() -> None:
    graph = {name: project_imports(path, top_level_only=True) for name, path in MODULES.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                # A package importing its own submodule from __init__ is not a cycle
                # that breaks imports (the submodule finds the package half-made but
                # needs nothing from it); anything longer is.
                if not (len(cycle) == 3 and within(cycle[1], cycle[0])):
                    raise AssertionError(" -> ".join(cycle))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


# Module-level memos the unit tests replace (monkeypatch) to test their bounds: a
# ``Final`` name is a C static in the compiled core, which a replacement would miss.
REPLACEABLE_MEMOS = {
    "pipeline.core.enrich": {"_TARGETS", "_TARGET_MEMO_MAX"},
    "pipeline.core.extract.client_ip": {"_MEMO_MAX"},
    "pipeline.core.formats.values": {"_IP_MEMO", "_IP_MEMO_MAX"},
    "pipeline.core.formats.detect": {"_SHAPES", "_SHAPES_MAX"},
}


@pytest.mark.parametrize("name", native.NATIVE_MODULES)
def test_core_constants_are_final(name: str) -> None:
    """The core's module-level constants are ``Final``: compiled, mypyc reads a ``Final``
    name as a C static and any other one from the module's dict at every use
    (bench/README.md, "Session 20")."""
    tree = ast.parse(native.source_path(name).read_text())
    loose = []
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            annotation = node.annotation
            if isinstance(annotation, ast.Subscript):
                annotation = annotation.value
            final = isinstance(annotation, ast.Name) and annotation.id == "Final"
            names = [] if final else [node.target.id]
        elif isinstance(node, ast.Assign):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        else:
            continue
        loose += [n for n in names if n.lstrip("_")[:1].isupper() and n.upper() == n]
    assert sorted(set(loose) - REPLACEABLE_MEMOS.get(name, set())) == []
