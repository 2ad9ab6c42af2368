"""``grayscope demo`` arguments: defaults, and invalid ones fail before anything starts."""

from __future__ import annotations

import argparse

import pytest

from pipeline.config import load_settings
from pipeline.dev.demo import add_demo_arguments, run_demo
from pipeline.errors import ConfigError


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_demo_arguments(parser)
    return parser.parse_args(argv)


def test_defaults() -> None:
    args = parse()
    assert (args.duration, args.rate, args.seed) == (60.0, 1000.0, 7)
    assert args.regression == "/play/share"
    assert args.keep_running is False
    assert args.log_dir is None


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (("--duration", "0"), "--duration"),
        (("--rate", "-5"), "--rate"),
        (("--regression", "/nowhere"), "--regression"),
    ],
)
def test_invalid_arguments_fail_before_anything_starts(argv: tuple[str, ...], flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        run_demo(parse(*argv), load_settings())


def test_no_regression_is_allowed() -> None:
    assert parse("--regression", "none").regression == "none"
