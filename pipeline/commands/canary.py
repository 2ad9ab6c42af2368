"""``grayscope canary status`` (the verdicts a running worker shows on ``GET /canary``) and
``grayscope canary simulate`` (the verdict engines side by side on simulated rollouts)."""

from __future__ import annotations

import argparse
import sys
from typing import IO, Any

import orjson

from pipeline.canary.client import fetch_canary, verdicts_from_payload
from pipeline.canary.format import format_funnels, format_verdicts
from pipeline.config import Settings, add_settings_arguments
from pipeline.errors import ConfigError


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

    report = actions.add_parser(
        "report", help="write the canary report of a running worker as one HTML file"
    )
    report.add_argument("--html", required=True, metavar="FILE", help="the file to write")
    report.add_argument(
        "--url",
        default=None,
        help="worker web URL (default: http://localhost:<GRAYSCOPE_WEB_PORT>, i.e. :6066)",
    )
    report.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for the worker (default 5)"
    )
    add_settings_arguments(report)
    report.set_defaults(handler=run_canary_report)

    simulate = actions.add_parser(
        "simulate",
        help="compare verdict engines on simulated A/A and A/B rollouts (needs numpy)",
    )
    simulate.add_argument("--json", action="store_true", help="print the figures as JSON")
    simulate.add_argument("--rollouts", type=int, default=1000, help="A/A rollouts (default 1000)")
    simulate.add_argument(
        "--ab-rollouts",
        type=int,
        default=None,
        help="rollouts per A/B scenario (default: a fifth of --rollouts, at least 50)",
    )
    simulate.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    simulate.add_argument(
        "--alpha", type=float, default=0.05, help="false-rollback level (default 0.05)"
    )
    simulate.add_argument(
        "--one-group",
        action="store_true",
        help="also run the one-group scenarios (one path group's 5xx regressed, the others"
        " healthy; --ab-rollouts each) for grayscope's promote rule",
    )
    add_settings_arguments(simulate)
    simulate.set_defaults(handler=run_canary_simulate)


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
    return (
        header
        + format_verdicts(verdicts_from_payload(payload))
        + format_funnels(payload.get("funnels") or ())
    )


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


def run_canary_simulate(
    args: argparse.Namespace, settings: Settings, out: IO[str] | None = None
) -> int:
    out = out or sys.stdout
    try:
        from pipeline.canary import simulate
    except ImportError as exc:  # numpy is a dev dependency
        raise ConfigError("grayscope canary simulate", f"needs numpy ({exc})") from exc
    rollouts = int(getattr(args, "rollouts", 1000))
    if rollouts < 1:
        raise ConfigError("--rollouts", "must be at least 1")
    result = simulate.simulate(
        rollouts=rollouts,
        seed=int(getattr(args, "seed", 1)),
        alpha=float(getattr(args, "alpha", 0.05)),
        ab_rollouts=getattr(args, "ab_rollouts", None),
    )
    # The conversion funnels: grayscope's funnel family on A/A and conversion-drop rollouts.
    result["grayscope"]["funnels"] = simulate.simulate_funnels(
        rollouts=rollouts,
        seed=int(getattr(args, "seed", 1)),
        alpha=float(getattr(args, "alpha", 0.05)),
        ab_rollouts=getattr(args, "ab_rollouts", None),
    )
    if getattr(args, "one_group", False):
        result["grayscope"]["one_group"] = simulate.simulate_one_group(
            rollouts=simulate.ab_rollout_count(rollouts, getattr(args, "ab_rollouts", None)),
            seed=int(getattr(args, "seed", 1)),
            alpha=float(getattr(args, "alpha", 0.05)),
        )
    if getattr(args, "json", False):
        out.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        out.write(simulate.format_table(result))
        out.write("\n" + simulate.format_funnel_table(result["grayscope"]["funnels"]))
        if "one_group" in result["grayscope"]:
            out.write("\n" + simulate.format_one_group_table(result["grayscope"]["one_group"]))
    return 0


def run_canary_report(
    args: argparse.Namespace, settings: Settings, out: IO[str] | None = None
) -> int:
    from pathlib import Path

    from pipeline.canary.report import render_html

    out = out or sys.stdout
    url = worker_url(args, settings)
    payload = fetch_canary(url, timeout=getattr(args, "timeout", 5.0))
    target = Path(args.html)
    try:
        target.write_text(render_html(payload), encoding="utf-8")
    except OSError as exc:
        raise ConfigError("--html", f"cannot write {target}: {exc.strerror}") from exc
    out.write(f"wrote {target} ({len(payload.get('verdicts') or [])} path groups)\n")
    return 0
