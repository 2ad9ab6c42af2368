"""``grayscope canary status``: the verdicts a running worker shows on ``GET /canary``."""

from __future__ import annotations

import argparse
import sys
from typing import IO, Any

import orjson

from pipeline.canary.client import fetch_canary, verdicts_from_payload
from pipeline.canary.format import format_verdicts
from pipeline.config import Settings, add_settings_arguments


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Set up ``grayscope canary`` (its actions and their flags) on ``parser``."""
    actions = parser.add_subparsers(dest="canary_command", required=True, metavar="ACTION")
    status = actions.add_parser(
        "status", help="print the canary verdicts of a running worker (GET /canary)"
    )
    status.add_argument(
        "--url",
        default=None,
        help="worker web URL (default: http://localhost:<GRAYSCOPE_WEB_PORT>, i.e. :6066)",
    )
    status.add_argument("--json", action="store_true", help="print the raw /canary JSON")
    status.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for the worker (default 5)"
    )
    add_settings_arguments(status)
    status.set_defaults(handler=run_canary_status)


def worker_url(args: argparse.Namespace, settings: Settings) -> str:
    url: str | None = getattr(args, "url", None)
    return url or f"http://localhost:{settings.web_port}"


def render_status(payload: dict[str, Any], url: str) -> str:
    """The header line and the verdict table for one ``/canary`` payload."""
    owned = payload.get("owned_partitions") or []
    header = (
        f"{url}: evaluated {payload.get('evaluated_at') or 'not yet'}, "
        f"window {payload.get('window_seconds')}s, alpha {payload.get('alpha')}, "
        f"min samples {payload.get('min_samples')}, "
        f"p95 threshold {payload.get('latency_threshold_ms')} ms, "
        f"partitions owned {owned} of {payload.get('partitions')}\n"
    )
    if not owned:
        header += "this worker owns no canary partition: ask another worker of the group\n"
    return header + format_verdicts(verdicts_from_payload(payload))


def run_canary_status(
    args: argparse.Namespace, settings: Settings, out: IO[str] | None = None
) -> int:
    out = out or sys.stdout
    url = worker_url(args, settings)
    payload = fetch_canary(url, timeout=getattr(args, "timeout", 5.0))
    if getattr(args, "json", False):
        out.write(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        out.write(render_status(payload, url))
    return 0
