"""pipeline.native: the list of compiled modules, the stale-build guard, the source-first switch."""

from __future__ import annotations

import importlib.machinery
import os
import sys
from pathlib import Path

import pytest

from pipeline import native

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def test_every_listed_module_exists_and_is_pure_core() -> None:
    for module, path in zip(native.NATIVE_MODULES, native.source_paths(), strict=True):
        assert Path(path).suffix == ".py" and not Path(path).is_absolute()
        assert native.source_path(module).is_file(), module
        # The I/O shell stays interpreted: no Faust agent, Kafka or HTTP client code.
        assert not module.startswith("agents")
        assert not module.endswith((".service", ".sink", ".exporter", ".dlq"))


def test_the_build_reads_the_same_list(tmp_path: Path) -> None:
    import subprocess

    out = subprocess.run(
        [sys.executable, str(native.source_path("pipeline.native"))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == native.source_paths()


def test_the_running_core_is_the_built_one() -> None:
    """Compiled where built (``make test``'s first pass), plain Python under tests/pure.py."""
    import importlib

    for module in native.NATIVE_MODULES:
        importlib.import_module(module)

    pure = any(isinstance(f, native._SourceFirst) for f in sys.meta_path)
    built = native.group_library() is not None
    loaded = native.loaded_native()
    if built and not pure:
        assert loaded == list(native.NATIVE_MODULES)
    else:
        assert loaded == []


def _fake_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.setattr(native, "_ROOT", tmp_path)
    monkeypatch.setattr(native, "NATIVE_MODULES", ("pipeline.core.process",))
    (tmp_path / "pipeline" / "core").mkdir(parents=True)
    source = tmp_path / "pipeline" / "core" / "process.py"
    source.write_text("")
    shim = tmp_path / "pipeline" / "core" / f"process{SUFFIX}"
    shim.write_bytes(b"")
    return source, shim


def test_a_source_changed_after_the_build_is_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, shim = _fake_tree(tmp_path, monkeypatch)
    assert native.stale_modules() == ["pipeline.core.process"]  # a shim without its library
    library = tmp_path / "pipeline" / f"core_native__mypyc{SUFFIX}"
    library.write_bytes(b"")
    os.utime(source, (1_000, 1_000))
    os.utime(shim, (1_000, 1_000))  # shims keep old times: only the library counts
    os.utime(library, (2_000, 2_000))
    assert native.stale_modules() == []
    os.utime(source, (3_000, 3_000))
    assert native.stale_modules() == ["pipeline.core.process"]


def test_without_a_build_nothing_is_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _source, shim = _fake_tree(tmp_path, monkeypatch)
    shim.unlink()
    assert native.stale_modules() == []
    assert native.compiled_path("pipeline.core.process") is None


def test_sources_first_must_come_before_the_core() -> None:
    with pytest.raises(RuntimeError, match="before the core"):
        native.prefer_sources()  # the core is already imported in this session


def test_a_c_module_changed_after_its_build_is_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(native, "_ROOT", tmp_path)
    monkeypatch.setattr(native, "NATIVE_MODULES", ())
    monkeypatch.setattr(native, "C_MODULES", ("pipeline.core._wire",))
    (tmp_path / "pipeline" / "core").mkdir(parents=True)
    source = tmp_path / "pipeline" / "core" / "_wire.c"
    source.write_text("")
    assert native.stale_modules() == []  # not built
    built = tmp_path / "pipeline" / "core" / f"_wire{SUFFIX}"
    built.write_bytes(b"")
    os.utime(source, (1_000, 1_000))
    os.utime(built, (2_000, 2_000))
    assert native.stale_modules() == []
    os.utime(source, (3_000, 3_000))
    assert native.stale_modules() == ["pipeline.core._wire"]


def test_a_shared_header_changed_after_the_build_makes_every_c_module_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(native, "_ROOT", tmp_path)
    monkeypatch.setattr(native, "NATIVE_MODULES", ())
    monkeypatch.setattr(native, "C_MODULES", ("pipeline.core._read", "pipeline.core._wire"))
    core = tmp_path / "pipeline" / "core"
    core.mkdir(parents=True)
    header = core / "_shared.h"
    header.write_text("")
    for name in ("_read", "_wire"):
        (core / f"{name}.c").write_text("")
        (core / f"{name}{SUFFIX}").write_bytes(b"")
        os.utime(core / f"{name}.c", (1_000, 1_000))
        os.utime(core / f"{name}{SUFFIX}", (2_000, 2_000))
    os.utime(header, (1_500, 1_500))
    assert native.c_header_paths() == ["pipeline/core/_shared.h"]
    assert native.stale_modules() == []
    os.utime(header, (3_000, 3_000))
    assert native.stale_modules() == ["pipeline.core._read", "pipeline.core._wire"]


def test_the_c_modules_are_built_with_the_core_and_left_out_of_plain_python() -> None:
    """Built beside the compiled core (``make native``) and used by it; under
    tests/pure.py they cannot be imported, so the Python paths run."""
    import importlib

    pure = any(isinstance(f, native._SourceFirst) for f in sys.meta_path)
    for module in native.C_MODULES:
        assert native.c_source_path(module).is_file()
        built = native._extension(native.c_source_path(module).with_suffix("")) is not None
        if pure:
            with pytest.raises(ImportError):
                importlib.import_module(module)
        else:
            assert built == (native.group_library() is not None), module
            if built:
                importlib.import_module(module)
