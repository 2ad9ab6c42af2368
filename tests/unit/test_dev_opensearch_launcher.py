"""The OpenSearch launcher is compiled once into the cache, or run from source without javac."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pipeline.dev.stack.opensearch import LAUNCHER, launcher_class_path


def _java_without_javac(tmp_path: Path) -> str:
    java = tmp_path / "jdk" / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text("#!/bin/sh\n")
    return str(java)


def test_without_javac_the_source_is_run(tmp_path: Path) -> None:
    lib = tmp_path / "opensearch" / "lib"
    lib.mkdir(parents=True)
    assert launcher_class_path(lib, _java_without_javac(tmp_path)) is None
    assert [p.name for p in lib.parent.iterdir()] == ["lib"]  # nothing half-built left


def test_compiled_classes_of_this_source_are_reused_without_javac(tmp_path: Path) -> None:
    lib = tmp_path / "opensearch" / "lib"
    lib.mkdir(parents=True)
    digest = hashlib.sha256(LAUNCHER.read_bytes()).hexdigest()[:16]
    classes = lib.parent / f"launcher-{digest}"
    classes.mkdir()
    (classes / f"{LAUNCHER.stem}.class").write_bytes(b"\xca\xfe\xba\xbe")
    assert launcher_class_path(lib, _java_without_javac(tmp_path)) == classes


def test_classes_of_another_source_are_not_used(tmp_path: Path) -> None:
    lib = tmp_path / "opensearch" / "lib"
    lib.mkdir(parents=True)
    stale = lib.parent / "launcher-0000000000000000"
    stale.mkdir()
    (stale / f"{LAUNCHER.stem}.class").write_bytes(b"\xca\xfe\xba\xbe")
    assert launcher_class_path(lib, _java_without_javac(tmp_path)) is None
