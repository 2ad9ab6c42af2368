"""``grayscope stack up|env|status|down|fetch``: see :mod:`pipeline.dev.stack.stack`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipeline.config import Settings, StackSettings

EXIT_OK = 0
EXIT_NOT_RUNNING = 3


def add_stack_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="stack_command", required=True, metavar="ACTION")
    helps = {
        "up": "start the services that are not running; return once every one answers",
        "env": "print `export GRAYSCOPE_...=...` lines for the running services",
        "status": "one line per service: running, not answering or stopped",
        "down": "stop every service of the stack folder (data stays)",
        "fetch": "download the services into the cache only (what `make services` runs; "
        "with GRAYSCOPE_STACK_OTELCOL=1 also build the benchmark's OpenTelemetry Collector)",
    }
    for action, help_text in helps.items():
        sub = actions.add_parser(action, help=help_text)
        sub.add_argument(
            "--dir",
            default=None,
            type=Path,
            help="stack folder (data, logs, pid files); default GRAYSCOPE_STACK_DIR",
        )
        sub.set_defaults(handler=run_stack)


def run_stack(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.dev.stack.stack import Stack, export_lines

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    stack = Stack(StackSettings.model_validate({}), args.dir)
    action = args.stack_command

    def report(line: str) -> None:
        # stdout stays clean for `eval "$(grayscope stack env)"`.
        print(line, file=sys.stderr, flush=True)

    if action == "fetch":
        stack.fetch()
        return EXIT_OK
    if action == "up":
        stack.up(report)
        report(f'stack in {stack.folder}; point a worker at it: eval "$(grayscope stack env)"')
        return EXIT_OK
    if action == "env":
        sys.stdout.write(export_lines(stack.env()))
        return EXIT_OK
    if action == "status":
        statuses = stack.status()
        for status in statuses:
            started = status.started
            detail = ""
            if started is not None and status.state != "stopped":
                endpoints = " ".join(f"{k}={v}" for k, v in started.env.items())
                detail = f" pid {started.pid} {endpoints} log {started.log_path}"
            print(f"{status.name}: {status.state}{detail}")
        running = all(status.state == "running" for status in statuses)
        return EXIT_OK if running else EXIT_NOT_RUNNING
    stack.down(report)
    return EXIT_OK
