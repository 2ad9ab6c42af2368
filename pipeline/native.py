"""The enrichment core compiled to C with mypyc: which modules, and whether in use.

The hot path (parsing, extraction, documents, span encoding) is plain typed
Python; ``make install`` (and the Docker build) compiles these modules with
mypyc, the compiler mypy and black ship with, into extension modules that sit
beside their sources. Python imports an extension module before a same-named
``.py``, so nothing else changes: the same functions, the same plain data,
~30 % less CPU per event for the worker (bench/README.md, "Session 6").
Without a C compiler everything runs as plain Python, with the same results
(the unit tests run in both forms: ``make test``).

This file imports nothing from the package, so ``python pipeline/native.py``
prints the source paths for the build (Makefile, setup.py) without a venv.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

_ROOT = Path(__file__).resolve().parent.parent

#: The compiled set is exactly the pure core's folder: every module under it.
CORE_PACKAGE = "pipeline.core"


def _core_modules() -> tuple[str, ...]:
    """Every module of ``pipeline/core/`` (packages' ``__init__`` files stay interpreted).

    Each must be mypyc-clean: no monkeypatching of its functions (compiled calls
    bind at build time), no identity tests against values mypyc may re-box, no
    dict subclasses with overrides (``pipeline.core (its __init__)`` stays outside for that).
    """
    folder = _ROOT.joinpath(*CORE_PACKAGE.split("."))
    return tuple(
        sorted(
            ".".join(path.relative_to(_ROOT).with_suffix("").parts)
            for path in folder.rglob("*.py")
            if path.name != "__init__.py"
        )
    )


#: Compiled modules (sorted by name; mypyc builds them as one group).
NATIVE_MODULES = _core_modules()

#: Hand-written C extension modules of the core, built with it (setup.py) from one C
#: file each beside them; their Python callers keep a plain-Python path for when they
#: are not built, and the plain-Python core does not use them (``prefer_sources``).
C_MODULES = ("pipeline.core._read", "pipeline.core._wire")

#: mypyc's shared library for all of them (``pipeline/core_native__mypyc.*.so``);
#: each module's own extension is a small shim that loads it.
GROUP_NAME = "pipeline.core_native"


def source_path(module: str) -> Path:
    return _ROOT.joinpath(*module.split(".")).with_suffix(".py")


def source_paths() -> list[str]:
    """Repository-relative sources of the compiled modules (the build's input)."""
    return [str(source_path(m).relative_to(_ROOT)) for m in NATIVE_MODULES]


def c_source_path(module: str) -> Path:
    return _ROOT.joinpath(*module.split(".")).with_suffix(".c")


def c_source_paths() -> list[str]:
    """Repository-relative C sources of ``C_MODULES``."""
    return [str(c_source_path(m).relative_to(_ROOT)) for m in C_MODULES]


def c_header_paths() -> list[str]:
    """Repository-relative headers the C modules share (``pipeline/core/*.h``): every C
    module is built again, and stale, when one changes."""
    core = _ROOT / "pipeline" / "core"
    return sorted(str(path.relative_to(_ROOT)) for path in core.glob("*.h"))


def _extension(path: Path) -> Path | None:
    """The extension module built for ``path`` (a name without suffix), if there is one."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = path.with_name(path.name + suffix)
        if candidate.exists():
            return candidate
    return None


def compiled_path(module: str) -> Path | None:
    """The built extension module beside the source, if there is one."""
    return _extension(source_path(module).with_suffix(""))


def group_library() -> Path | None:
    """The shared library holding the compiled code, if built."""
    base = _ROOT.joinpath(*GROUP_NAME.split("."))
    return _extension(base.with_name(base.name + "__mypyc"))


def stale_modules() -> list[str]:
    """Compiled modules whose source changed after the build: Python would
    silently run the old code. ``make native`` rebuilds them."""
    stale = []
    headers = max((_ROOT.joinpath(h).stat().st_mtime for h in c_header_paths()), default=0.0)
    for m in C_MODULES:
        built_c = _extension(c_source_path(m).with_suffix(""))
        if built_c is None:
            continue
        if max(c_source_path(m).stat().st_mtime, headers) > built_c.stat().st_mtime:
            stale.append(m)
    library = group_library()
    if library is None:
        return [m for m in NATIVE_MODULES if compiled_path(m) is not None] + stale  # shims alone
    built = library.stat().st_mtime
    return [
        m
        for m in NATIVE_MODULES
        if compiled_path(m) is not None and source_path(m).stat().st_mtime > built
    ] + stale


def loaded_native(modules: Sequence[str] = NATIVE_MODULES) -> list[str]:
    """Which of ``modules`` were imported from an extension module."""
    out = []
    for name in modules:
        module = sys.modules.get(name)
        origin = getattr(module, "__file__", None) or ""
        if origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
            out.append(name)
    return out


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Finds the compiled modules' ``.py`` sources even where a build exists."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname in C_MODULES:
            raise ModuleNotFoundError(f"{fullname}: the plain-Python core is in use", name=fullname)
        if fullname not in NATIVE_MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, source_path(fullname))


def prefer_sources() -> None:
    """Import the plain-Python form of every compiled module from now on (tests)."""
    if any(name in sys.modules for name in NATIVE_MODULES):
        raise RuntimeError("prefer_sources() must run before the core is imported")
    if not any(isinstance(finder, _SourceFirst) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SourceFirst())


if __name__ == "__main__":
    # The build's inputs (Makefile): with --c, the C sources and their headers too.
    c_inputs = c_source_paths() + c_header_paths() if "--c" in sys.argv else []
    print(" ".join(source_paths() + c_inputs))
