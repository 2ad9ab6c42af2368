"""Development tooling stays out of the wheel and the worker image (issue 14).

The demo, the embedded stand-ins and the real-service stack run from a source
checkout; an installed wheel leaves them out and its ``grayscope demo`` /
``grayscope stack`` say so instead of failing with a traceback.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest
from setuptools import find_packages

from pipeline.commands.main import EXIT_CONFIG, main

ROOT = Path(__file__).resolve().parents[2]
DEV_TOOLING = ("pipeline.dev.demo", "pipeline.dev.embedded", "pipeline.dev.stack")


def wheel_packages() -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    found = config["tool"]["setuptools"]["packages"]["find"]
    return set(find_packages(str(ROOT), include=found["include"], exclude=found["exclude"]))


def test_the_wheel_leaves_the_dev_tooling_out_and_keeps_what_the_worker_needs() -> None:
    packages = wheel_packages()
    for name in packages:
        assert not name.startswith(DEV_TOOLING), name
    # produce --synthetic (compose's traffic profile) needs the generator.
    assert {"pipeline", "pipeline.core", "pipeline.sinks", "pipeline.dev", "agents"} <= packages
    assert (ROOT / "pipeline" / "dev" / "synth.py").exists()
    assert any(name.startswith("pipeline.dev.stack") for name in find_packages(str(ROOT)))


@pytest.mark.parametrize("argv", [["demo"], ["stack", "status"], ["stack"]])
def test_a_command_of_missing_dev_tooling_says_so(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("pipeline.dev.demo", "pipeline.dev.stack.command"):
        monkeypatch.setitem(sys.modules, name, None)  # as if the wheel had left it out
    assert main(argv) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert f"`grayscope {argv[0]}` is development tooling" in err
    assert "Traceback" not in err
