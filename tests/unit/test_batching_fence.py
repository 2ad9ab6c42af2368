"""agents/batching.py is the one fence around faust-streaming's and aiokafka's private names.

- every private name it uses on a library object is listed (and nothing listed is unused);
- every listed name exists in the installed libraries (fails loudly on an upgrade);
- no other module of the project uses a listed name, or overrides a library's private method;
- the worker falls back to the stock stream path on untested versions.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import logging
from pathlib import Path

import pytest
from faust.transport.drivers import aiokafka as faust_aiokafka

from agents import batching
from agents.app import create_app
from pipeline.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
FENCE = ROOT / "agents" / "batching.py"
LISTED = batching.FAUST_PRIVATE_NAMES | batching.AIOKAFKA_PRIVATE_NAMES
LISTED_NAMES = {name for _, name in LISTED}


def private_names_used(path: Path) -> set[str]:
    """Private (single underscore) names a module reads, writes, defines or passes to getattr."""
    tree = ast.parse(path.read_text())
    used: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            used.add(node.attr)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _private(node.name):
            used.add(node.name)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr")
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private(node.args[1].value)
        ):
            used.add(node.args[1].value)
        elif isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            used.update(t.id for t in targets if isinstance(t, ast.Name) and _private(t.id))
    return used


def own_private_names(path: Path) -> set[str]:
    """Private names the module defines for itself (its own methods and attributes)."""
    tree = ast.parse(path.read_text())
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    own.add(item.target.id)
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            for target in targets:
                if (
                    isinstance(target, ast.Attribute)
                    and isinstance(target.value, ast.Name)
                    and target.value.id == "self"
                    and isinstance(node, ast.AnnAssign | ast.Assign)
                ):
                    own.add(target.attr)
    return {name for name in own if _private(name)}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


# The fence's own helpers and state (not library names): the BatchPump's fields,
# the consumer's fetch counter, and private helpers it defines itself.
FENCE_OWN = {
    "_finish",
    "_run",
    "_deliver",
    "_to_batch",
    "_fetch_sequence",
}


def test_every_private_library_name_of_the_fence_is_listed() -> None:
    # A listed name the fence assigns on ``self`` is still the library's: a subclass
    # replacing a library method per instance (``MessagePartitionRecords``).
    own = own_private_names(FENCE) - LISTED_NAMES
    used = private_names_used(FENCE) - own - FENCE_OWN
    assert used == LISTED_NAMES, (
        f"unlisted: {sorted(used - LISTED_NAMES)}; listed but unused: {sorted(LISTED_NAMES - used)}"
    )


@pytest.mark.parametrize("owner_and_name", sorted(LISTED))
def test_every_listed_name_exists_in_the_installed_libraries(
    owner_and_name: tuple[str, str],
) -> None:
    owner, name = owner_and_name
    module_name, _, class_name = owner.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    if any(name in vars(klass) for klass in inspect.getmro(cls)):
        return  # a method or class attribute
    # An instance attribute: assigned somewhere in the class's (or a base's) source.
    sources = []
    for klass in inspect.getmro(cls):
        try:
            sources.append(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
    assert any(f"self.{name}" in source for source in sources), f"{owner} has no {name}"


def test_no_other_module_uses_the_fenced_names() -> None:
    for package in ("pipeline", "agents"):
        for path in (ROOT / package).rglob("*.py"):
            if path == FENCE:
                continue
            # A module's own attribute of the same name (the OTLP stand-in's ``_thread``)
            # is not the library's.
            clash = (private_names_used(path) - own_private_names(path)) & LISTED_NAMES
            assert not clash, f"{path.relative_to(ROOT)} uses {sorted(clash)} outside the fence"


def test_the_tested_versions_are_the_pinned_ones() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    for name, version in batching.TESTED_VERSIONS.items():
        assert f'"{name}=={version}"' in pyproject
    assert batching.batch_path_problem() is None  # this environment runs the pins


def test_other_versions_fall_back_to_the_stock_stream_path(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert batching.batch_path_problem({"faust-streaming": "0.15.3", "aiokafka": "0.15.0"}) == (
        "aiokafka 0.15.0 (tested: 0.14.0)"
    )
    settings = load_settings(consumer_mode="batch", geoip_city_db="", es_url="")
    assert create_app(settings).batch_path  # type: ignore[attr-defined]
    monkeypatch.setattr(batching, "TESTED_VERSIONS", {"aiokafka": "0.0.1"})
    monkeypatch.setattr("agents.app.batch_path_problem", batching.batch_path_problem)
    with caplog.at_level(logging.WARNING):
        app = create_app(settings)
    assert not app.batch_path  # type: ignore[attr-defined]
    assert "stock stream path" in caplog.text
    # The stream path's fenced consumer is fenced code too: stock Faust there as well.
    assert not app.stream_fence  # type: ignore[attr-defined]
    assert app.transport.Consumer is faust_aiokafka.Consumer  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("mode", "consumer_class"),
    [("batch", batching.BatchingConsumer), ("stream", batching.SeekFencedConsumer)],
)
def test_each_consumer_mode_gets_its_consumer(mode: str, consumer_class: type) -> None:
    app = create_app(load_settings(consumer_mode=mode, geoip_city_db="", es_url=""))
    assert app.transport.Consumer is consumer_class  # type: ignore[attr-defined]
