"""Hook for more summary sections after the drill-down.

>>> EXTRA SECTIONS HOOK (issue 6: the canary verdict goes here) <<<

:func:`extra_sections` is called once, after the drill-down was computed and
before it is printed; whatever sections it returns are printed after the
built-in ones, in order. It gets everything the demo knows in a
:class:`DemoContext`: a way to query the store, the rollout windows, the
injected regression, the spans received. It returns no sections for now.
An exception raised here is reported as a failed section; it does not
abort the demo or skip the teardown.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.demo.report import Section
from pipeline.demo.summary import INDEX_PATTERN, Summary, Window
from pipeline.synth import Regression

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
    spans: Callable[[], list[dict[str, Any]]]  # every span the receiver holds


def extra_sections(context: DemoContext) -> list[Section]:
    """Sections printed after the drill-down; empty until the canary verdict lands."""
    return []


def safe_extra_sections(
    context: DemoContext, hook: Callable[[DemoContext], list[Section]] = extra_sections
) -> list[Section]:
    try:
        return list(hook(context))
    except Exception as exc:  # a broken extra section must not cost the summary
        return [Section("Extra section failed", [f"{type(exc).__name__}: {exc}"])]


__all__ = ["INDEX_PATTERN", "DemoContext", "StoreRequest", "extra_sections", "safe_extra_sections"]
