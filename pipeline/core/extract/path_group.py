"""Path groups: configurable rules, default the first N path segments."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from pipeline.core.extract.url import decode_component
from pipeline.core.formats.values import remember

_MEMO_MAX: Final = 16_384
_MEMO_PATH_MAX: Final = 2048


@dataclass(frozen=True, slots=True)
class PathRule:
    match: re.Pattern[str]
    group: str | None = None  # None: the default grouping of the path
    route: str | None = None  # templated route for http.route, e.g. /godoc/pkg/{name}


@dataclass(frozen=True, slots=True)
class PathRules:
    rules: tuple[PathRule, ...] = ()
    depth: int = 2
    _memo: dict[str, tuple[str, str | None]] = field(default_factory=dict, compare=False)

    @classmethod
    def from_config(cls, rules: list[dict[str, str]], depth: int) -> PathRules:
        return cls(
            tuple(
                PathRule(re.compile(r["match"]), r.get("group") or None, r.get("route") or None)
                for r in rules
            ),
            depth,
        )

    def classify(self, path: str) -> tuple[str, str | None]:
        """(path group, route or None) for a decoded URL path."""
        memo = self._memo
        hit = memo.get(path)
        if hit is not None:
            return hit
        result = self._classify(path)
        # Paths are high-cardinality: a bounded memo, cheap to reset, short keys only.
        if len(path) <= _MEMO_PATH_MAX:
            remember(memo, path, result, _MEMO_MAX)
        return result

    def _classify(self, path: str) -> tuple[str, str | None]:
        for rule in self.rules:
            if rule.match.search(path):
                return rule.group or default_group(path, self.depth), rule.route
        return default_group(path, self.depth), None


def default_group(path: str, depth: int) -> str:
    """``/godoc/pkg/net/http`` -> ``/godoc/pkg`` (empty segments ignored)."""
    segments = [s for s in path.split("/") if s][:depth]
    return "/" + "/".join(segments) if segments else "/"


def decoded_path(raw_path: str) -> str:
    """Percent-decode each segment; an encoded ``%2F`` stays inside its segment."""
    if "%" not in raw_path:
        return raw_path or "/"
    return (
        "/".join(decode_component(part).replace("/", "%2F") for part in raw_path.split("/")) or "/"
    )
