"""build_once: a service binary is built into its cache entry once, whoever asks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pipeline.dev.stack.process import build_once
from pipeline.errors import ServiceError


def test_a_cached_binary_is_returned_without_building(tmp_path: Path) -> None:
    binary = tmp_path / "svc-1.0" / "svc"
    binary.parent.mkdir()
    binary.write_text("built before")
    builds: list[str] = []
    assert build_once(binary, "svc", "no-such-go", builds.append) == binary
    assert builds == []  # and no Go needed for it


def test_the_first_call_builds_under_the_lock_and_the_next_one_reuses(tmp_path: Path) -> None:
    binary = tmp_path / "svc-1.0" / "svc"
    builds: list[str] = []

    def build(go_path: str) -> None:
        builds.append(go_path)
        assert (binary.parent / ".build.lock").exists()
        binary.write_text("built")

    go = sys.executable  # any program on a path stands in for Go here
    assert build_once(binary, "svc", go, build) == binary
    assert build_once(binary, "svc", go, build) == binary
    assert builds == [go]


def test_without_go_the_error_names_what_needed_it(tmp_path: Path) -> None:
    with pytest.raises(ServiceError, match="building svc needs Go"):
        build_once(tmp_path / "svc", "svc", "no-such-go-on-path", lambda _: None)
