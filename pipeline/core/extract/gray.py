"""Gray-release attributes: gray id, stage (canary/stable) and version."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from pipeline.core.formats.values import MEMO_KEY_MAX, remember
from pipeline.core.model import AccessRecord


@dataclass(frozen=True, slots=True)
class GrayRules:
    id_headers: tuple[str, ...] = ("x-abtest-id", "x-gray-id")
    id_header_pattern: re.Pattern[str] = re.compile(r"^[a-z0-9]{8,16}$")
    id_query_arg: str = "abt"
    id_query_pattern: re.Pattern[str] = re.compile(r"^[a-z0-9]{4,12}$")
    canary_header: str = "x-go-stage"
    canary_header_value: str = "canary"
    canary_cookie: str = "go_canary"
    canary_cookie_value: str = "1"
    canary_subset: str = "canary"
    version_query_arg: str = "v"
    version_subset_pattern: re.Pattern[str] = re.compile(r"^v\d+")
    # Id candidate -> valid? Experiment ids repeat on every request of their
    # cohort: a dict hit instead of a regex run (~0.2 µs) on most lines.
    header_ids: dict[str, bool] = field(default_factory=dict, init=False, compare=False, repr=False)
    query_ids: dict[str, bool] = field(default_factory=dict, init=False, compare=False, repr=False)

    def valid_header_id(self, value: str) -> bool:
        return _checked(self.header_ids, self.id_header_pattern, value)

    def valid_query_id(self, value: str) -> bool:
        return _checked(self.query_ids, self.id_query_pattern, value)


_ID_MEMO_MAX: Final = 8192


def _checked(memo: dict[str, bool], pattern: re.Pattern[str], value: str) -> bool:
    valid = pattern.fullmatch(value) is not None
    if len(value) <= MEMO_KEY_MAX:
        remember(memo, value, valid, _ID_MEMO_MAX)
    return valid


def gray_id(
    rec: AccessRecord, query: dict[str, str], rules: GrayRules
) -> tuple[str | None, str | None]:
    """(id, source) from the first *valid* candidate; invalid values are skipped as is
    (never lower-cased or trimmed into validity)."""
    headers = rec.headers
    known = rules.header_ids
    for name in rules.id_headers:
        value = headers.get(name)
        if value is not None:
            valid = known.get(value)
            if valid is None:
                valid = rules.valid_header_id(value)
            if valid:
                return value, "header"
    value = query.get(rules.id_query_arg)
    if value is None:
        value = rec.args.get(rules.id_query_arg)
    if value is not None:
        valid = rules.query_ids.get(value)
        if valid is None:
            valid = rules.valid_query_id(value)
        if valid:
            return value, "query"
    return None, None


def istio_subset(cluster: str | None) -> str | None:
    """``outbound|8080|v1|godoc.default.svc.cluster.local`` -> ``v1``."""
    if not cluster or cluster.count("|") < 3:
        return None
    subset = cluster.split("|", 3)[2]
    return subset or None


def stage(rec: AccessRecord, subset: str | None, rules: GrayRules) -> str:
    header = rec.headers.get(rules.canary_header)
    if header is not None and header.strip().lower() == rules.canary_header_value:
        return "canary"
    if rec.cookies.get(rules.canary_cookie) == rules.canary_cookie_value:
        return "canary"
    if subset is not None and subset == rules.canary_subset:
        return "canary"
    return "stable"


def version(
    rec: AccessRecord, query: dict[str, str], subset: str | None, rules: GrayRules
) -> str | None:
    # The URI's ?v= wins even when the text format's field says "-": nginx drops
    # $args after an internal redirect, the original $request_uri keeps them.
    value = query.get(rules.version_query_arg)
    if value is None:
        value = rec.args.get(rules.version_query_arg)
    if value:
        return value
    if rec.version_field and rec.version_field != "-":
        return rec.version_field
    if subset is not None and rules.version_subset_pattern.match(subset):
        return subset
    return None
