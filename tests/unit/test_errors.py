"""One error tree: every exception grayscope defines derives from GrayscopeError,
lives in pipeline/errors.py, and callers decide on ``retriable``."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from pipeline import errors

ROOT = Path(__file__).resolve().parents[2]


def test_every_project_exception_is_in_the_tree() -> None:
    for package in ("pipeline", "agents"):
        for path in (ROOT / package).rglob("*.py"):
            if path.name == "errors.py" and path.parent.name == "pipeline":
                continue
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef):
                    bases = {ast.unparse(b) for b in node.bases}
                    assert not any(b.endswith(("Exception", "Error")) for b in bases), (
                        f"{path.relative_to(ROOT)}: class {node.name}({', '.join(bases)}) "
                        "belongs in pipeline/errors.py"
                    )


def test_every_error_derives_from_the_root_and_is_drawn_in_the_docstring() -> None:
    doc = errors.__doc__ or ""
    for name, cls in inspect.getmembers(errors, inspect.isclass):
        if cls.__module__ != errors.__name__:
            continue
        assert issubclass(cls, errors.GrayscopeError), name
        assert name in doc, f"{name} is not drawn in pipeline/errors.py's tree"


@pytest.mark.parametrize(
    ("error", "retriable"),
    [
        (errors.StoreUnavailable("x"), True),
        (errors.StoreRejected("x"), False),
        (errors.DeadLetterError("x"), True),
        (errors.ExportError("x"), True),
        (errors.ExportRequestFailed("x", retriable=False), False),
        (errors.CanaryUnavailable("x"), True),
        (errors.ConfigError("S", "x"), False),
    ],
)
def test_retriable_says_whether_to_try_again(error: errors.GrayscopeError, retriable: bool) -> None:
    assert error.retriable is retriable
