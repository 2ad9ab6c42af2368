"""``grayscope demo``: the whole pipeline on one machine with a drill-down summary.

Light on purpose: the CLI imports this package to build its parser, and the
heavy parts (aiokafka, the embedded services) load only when the demo runs.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.config import Settings


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.dev.demo.command import add_demo_arguments as add

    add(parser)


def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.dev.demo.command import run_demo as run

    return run(args, settings)


__all__ = ["add_demo_arguments", "run_demo"]
