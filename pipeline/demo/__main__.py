"""``python -m pipeline.dev.demo``: ``grayscope demo`` without the ``grayscope`` wrapper."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline.config import add_settings_arguments, settings_from_args
from pipeline.dev.demo import add_demo_arguments, run_demo
from pipeline.errors import ConfigError, GrayscopeError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grayscope demo")
    add_demo_arguments(parser)
    add_settings_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_demo(args, settings_from_args(args))
    except ConfigError as exc:
        print(f"grayscope: configuration error: {exc}", file=sys.stderr)
        return 2
    except GrayscopeError as exc:
        print(f"grayscope: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
