"""Hook for more summary sections after the drill-down.

:func:`extra_sections` is called once, after the drill-down was computed and
before it is printed; whatever sections it returns are printed after the
built-in ones, in order. It gets everything the demo knows in a
:class:`DemoContext`: a way to query the store, the rollout windows, the
injected regression, the spans at hand, the worker's URL. It returns the
canary verdicts the worker computed live (``GET /canary``). An exception
raised here is reported as a failed section; it does not abort the demo or
skip the teardown.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.canary import format_verdicts
from pipeline.canary.client import fetch_canary, fetch_verdicts
from pipeline.canary.format import format_funnels
from pipeline.canary.records import Decision, Verdict
from pipeline.dev.demo.report import Section
from pipeline.dev.demo.summary import INDEX_PATTERN, Summary, Window
from pipeline.dev.synth import Regression

#: ``store_request(method, path, body)`` -> decoded JSON; raises on HTTP >= 400.
StoreRequest = Callable[[str, str, Any], Any]


@dataclass(frozen=True, slots=True)
class DemoContext:
    store_request: StoreRequest
    index_pattern: str
    windows: Sequence[Window]  # one per rollout stage, wall-clock epoch ns
    regression: Regression | None
    stable_version: str
    canary_version: str
    summary: Summary
    # The spans at hand: every one the embedded receiver holds, or (on the real stack)
    # those Jaeger's search found for the spotlight gray id.
    spans: Callable[[], list[dict[str, Any]]]
    worker_url: str = ""


VERDICT_WAIT_SECONDS = 15.0


def extra_sections(context: DemoContext) -> list[Section]:
    """The worker's live canary verdicts, once the regressed path group has one."""
    if not context.worker_url:
        return []
    verdicts = _wait_for_verdicts(context)
    title = (
        "Canary verdicts (worker /canary, `grayscope canary status`: anytime-valid evidence "
        "of the whole rollout against 1/alpha; counts, z and p of the latest complete window)"
    )
    sections = [Section(title, format_verdicts(verdicts).rstrip("\n").splitlines())]
    funnels = fetch_canary(context.worker_url).get("funnels") or ()
    if funnels:
        sections.append(
            Section(
                "Conversion funnel (users by client address: /play -> /play/compile ->"
                " /play/share; counts per arm, the drop with its bounds, the evidence)",
                format_funnels(funnels).rstrip("\n").splitlines(),
            )
        )
    return sections


def _wait_for_verdicts(context: DemoContext) -> list[Verdict]:
    # The worker judges on a timer; give the last window of the run time to be judged.
    wanted = context.regression.path_group if context.regression is not None else None
    traffic_end = max((w.end_ns for w in context.windows), default=0) / 1e9 or None
    deadline = time.monotonic() + VERDICT_WAIT_SECONDS
    verdicts = fetch_verdicts(context.worker_url)
    while time.monotonic() < deadline and not verdicts_settled(verdicts, wanted, traffic_end):
        time.sleep(0.5)
        verdicts = fetch_verdicts(context.worker_url)
    return verdicts


def verdicts_settled(
    verdicts: Sequence[Verdict], wanted: str | None, traffic_end: float | None
) -> bool:
    """Enough to print: the wanted path group has a complete verdict that decides, or
    that covers the end of the traffic (the last rollout stage has the widest canary
    share; an early window of a short run may be too thin to decide anything)."""
    if not verdicts:
        return False
    if wanted is None:
        return True
    return any(
        v.path_group == wanted
        and v.complete
        and (
            v.decision is not Decision.INSUFFICIENT_DATA
            or traffic_end is None
            or v.window_end >= traffic_end
        )
        for v in verdicts
    )


def safe_extra_sections(
    context: DemoContext, hook: Callable[[DemoContext], list[Section]] = extra_sections
) -> list[Section]:
    try:
        return list(hook(context))
    except Exception as exc:  # a broken extra section must not cost the summary
        return [Section("Extra section failed", [f"{type(exc).__name__}: {exc}"])]


__all__ = ["INDEX_PATTERN", "DemoContext", "StoreRequest", "extra_sections", "safe_extra_sections"]
