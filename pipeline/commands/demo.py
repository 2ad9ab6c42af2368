"""``grayscope demo``: the whole pipeline locally on synthetic gray-release traffic.

The demo itself is development tooling (``pipeline/dev/demo/``, with the
``embedded`` extra's services); this module only binds it to the command line
and imports it when the command runs.
"""

from __future__ import annotations

import argparse

from pipeline.config import Settings


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.dev.demo import add_demo_arguments as add

    add(parser)


def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.dev.demo import run_demo as run

    return int(run(args, settings))
