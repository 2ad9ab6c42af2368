"""The ``grayscope`` command line.

Subcommands: enrich (stdin -> documents), worker, setup, produce, demo,
kibana import, canary status, stack up|env|status|down. Every subcommand takes the settings as flags
that mirror the ``GRAYSCOPE_*`` environment variables.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from pipeline.config import Settings, add_settings_arguments, settings_from_args
from pipeline.errors import ConfigError, GrayscopeError

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_RUNTIME = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grayscope",
        description="Streaming log and trace enrichment for gray (canary) releases.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    enrich = sub.add_parser(
        "enrich",
        help="read raw message values (one per line) on stdin, write enriched documents on stdout",
    )
    enrich.add_argument(
        "--dlq",
        metavar="PATH",
        default=None,
        help="write dead-letter records (JSON: reason, detail, raw) here; default: stderr",
    )
    add_settings_arguments(enrich)
    enrich.set_defaults(handler=_lazy("pipeline.commands.enrich", "run_enrich"))

    for name, help_text in COMMANDS.items():
        command = sub.add_parser(name, help=help_text[0])
        help_text[1](command)
        add_settings_arguments(command)
    return parser


def _no_options(parser: argparse.ArgumentParser) -> None:
    return None


def _lazy(module: str, function: str) -> Callable[[argparse.Namespace, Settings], int]:
    def handler(args: argparse.Namespace, settings: Settings) -> int:
        import importlib

        return int(getattr(importlib.import_module(module), function)(args, settings))

    return handler


def _worker_options(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(handler=_lazy("pipeline.commands.worker", "run_worker"))


def _setup_options(parser: argparse.ArgumentParser) -> None:
    from pipeline.commands.setup import add_setup_arguments

    add_setup_arguments(parser)
    parser.set_defaults(handler=_lazy("pipeline.commands.setup", "run_setup"))


def _kibana_options(parser: argparse.ArgumentParser) -> None:
    from pipeline.commands.kibana import add_kibana_arguments

    actions = parser.add_subparsers(dest="kibana_command", required=True, metavar="ACTION")
    imp = actions.add_parser(
        "import", help="import the data view, visualizations and dashboard into Kibana"
    )
    add_kibana_arguments(imp)
    add_settings_arguments(imp)
    imp.set_defaults(handler=_lazy("pipeline.commands.kibana", "run_kibana_import"))


def _produce_options(parser: argparse.ArgumentParser) -> None:
    from pipeline.commands.produce import add_produce_arguments

    add_produce_arguments(parser)
    parser.set_defaults(handler=_lazy("pipeline.commands.produce", "run_produce"))


def _demo_options(parser: argparse.ArgumentParser) -> None:
    from pipeline.commands.demo import add_demo_arguments

    try:
        add_demo_arguments(parser)
    except ImportError:
        _without_dev_tooling(parser, "demo")
        return
    parser.set_defaults(handler=_lazy("pipeline.commands.demo", "run_demo"))


def _stack_options(parser: argparse.ArgumentParser) -> None:
    try:
        from pipeline.dev.stack.command import add_stack_arguments
    except ImportError:
        _without_dev_tooling(parser, "stack")
        return
    add_stack_arguments(parser)


def _without_dev_tooling(parser: argparse.ArgumentParser, command: str) -> None:
    """The command of development tooling the wheel leaves out (pyproject.toml): it says so."""
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def handler(args: argparse.Namespace, settings: Settings) -> int:
        print(
            f"grayscope: `grayscope {command}` is development tooling, not part of this "
            "installation (the wheel and the worker image leave it out): run it from a "
            "source checkout after `make install`",
            file=sys.stderr,
        )
        return EXIT_CONFIG

    parser.set_defaults(handler=handler)


def _canary_options(parser: argparse.ArgumentParser) -> None:
    from pipeline.commands.canary import configure_parser

    configure_parser(parser)


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "worker": ("run the Faust worker (Kafka -> Elasticsearch + OTLP)", _worker_options),
    "setup": ("install index templates and check connectivity", _setup_options),
    "kibana": ("Kibana saved objects (import)", _kibana_options),
    "produce": ("send a file, stdin or synthetic traffic to Kafka", _produce_options),
    "demo": ("run the whole pipeline locally on synthetic gray-release traffic", _demo_options),
    "canary": ("canary analysis: verdicts of a running worker (status), simulate", _canary_options),
    "stack": ("the real local services (Kafka, OpenSearch, ...) without Docker", _stack_options),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
        return int(args.handler(args, settings))
    except ConfigError as exc:
        print(f"grayscope: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except GrayscopeError as exc:
        print(f"grayscope: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
