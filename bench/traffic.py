"""Write synthetic gray-release traffic (raw message values, one per line) to stdout.

A thin shell over :func:`pipeline.dev.synth.generate`, e.g.::

    .venv/bin/python bench/traffic.py -n 1000 --regression | .venv/bin/grayscope enrich
"""

from __future__ import annotations

import argparse
import sys

from pipeline.dev.synth import Regression, generate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--events", type=int, default=1000, help="0 = forever")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--canary-share", type=float, default=0.1)
    parser.add_argument(
        "--regression", action="store_true", help="slow, failing canary on /play/share"
    )
    parser.add_argument("--clients", type=int, default=20_000)
    args = parser.parse_args(argv)
    out = sys.stdout.buffer
    lines = generate(
        args.events or None,
        args.seed,
        canary_share=args.canary_share,
        regression=Regression() if args.regression else None,
        clients=args.clients,
    )
    try:
        for line in lines:
            out.write(line + b"\n")
    except BrokenPipeError:  # `traffic.py | head` is fine
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
