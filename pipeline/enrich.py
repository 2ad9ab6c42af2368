"""The enrichment chain: small steps with one signature, like structlog's processors.

Every step is ``step(record, enrichment, context) -> None`` and fills in part
of the Enrichment. Lookup data (rules, GeoIP readers) arrives through the
EnrichContext, never through module globals.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from pipeline.config import DEFAULT_TRUSTED_PROXIES
from pipeline.core.extract import gray
from pipeline.core.extract.client_ip import TrustedProxies
from pipeline.core.extract.path_group import PathRules, decoded_path
from pipeline.core.extract.trace import trace_context
from pipeline.core.extract.url import first_query_values, split_target
from pipeline.core.formats.values import remember
from pipeline.core.model import AccessRecord, AsnInfo, Enrichment, GeoInfo, ReadOnlyDict

if TYPE_CHECKING:
    from pipeline.config import Settings


class GeoLookup(Protocol):
    def lookup(self, ip: str) -> tuple[GeoInfo | None, AsnInfo | None]: ...


@dataclass(slots=True)
class EnrichContext:
    """Everything the steps look things up in."""

    gray_rules: gray.GrayRules = field(default_factory=gray.GrayRules)
    path_rules: PathRules = field(default_factory=PathRules)
    proxies: TrustedProxies = field(
        default_factory=lambda: TrustedProxies.from_cidrs(DEFAULT_TRUSTED_PROXIES.split(","))
    )
    geoip: GeoLookup | None = None
    service_name: str | None = None
    include_original: bool = False
    max_message_bytes: int = 1_048_576

    @classmethod
    def from_settings(cls, settings: Settings, geoip: GeoLookup | None = None) -> EnrichContext:
        from pipeline.config import load_path_rules

        rules = gray.GrayRules(
            id_headers=tuple(settings.gray_id_headers),
            id_header_pattern=re.compile(settings.gray_id_header_pattern),
            id_query_arg=settings.gray_id_query_arg.lower(),
            id_query_pattern=re.compile(settings.gray_id_query_pattern),
            canary_header=settings.canary_header.lower(),
            canary_header_value=settings.canary_header_value.lower(),
            canary_cookie=settings.canary_cookie,
            canary_cookie_value=settings.canary_cookie_value,
            canary_subset=settings.canary_subset,
            version_query_arg=settings.version_query_arg.lower(),
            version_subset_pattern=re.compile(settings.version_subset_pattern),
        )
        return cls(
            gray_rules=rules,
            path_rules=PathRules.from_config(
                load_path_rules(settings.path_rules), settings.path_group_depth
            ),
            proxies=TrustedProxies.from_cidrs(settings.trusted_proxies),
            geoip=geoip,
            service_name=settings.service_name or None,
            include_original=settings.include_original,
            max_message_bytes=settings.max_message_bytes,
        )


Step = Callable[[AccessRecord, Enrichment, EnrichContext], None]


def url_step(rec: AccessRecord, enr: Enrichment, ctx: EnrichContext) -> None:
    uri = rec.uri
    if uri is None:
        return
    parts = _TARGETS.get(uri)
    if parts is None:
        parts = target_parts(uri)
        if len(uri) <= _TARGET_MEMO_KEY_MAX:
            remember(_TARGETS, uri, parts, _TARGET_MEMO_MAX)
    enr.url_path, enr.url_query, query = parts
    if query:
        enr.query = query  # the memo's read-only dict, shared by every event of this target


# Request target -> its parts. The same targets come back all the time
# (``/godoc/pkg/fmt?v=1.22``); long ones are not kept (bounded memory).
_TARGETS: dict[str, tuple[str, str | None, ReadOnlyDict]] = {}
_TARGET_MEMO_MAX = 16_384
_TARGET_MEMO_KEY_MAX = 2048


def target_parts(uri: str) -> tuple[str, str | None, ReadOnlyDict]:
    """(decoded path, raw query or None, first value per query arg) of a request target."""
    raw_path, query = split_target(uri)
    return decoded_path(raw_path), query or None, ReadOnlyDict(first_query_values(query))


def gray_step(rec: AccessRecord, enr: Enrichment, ctx: EnrichContext) -> None:
    rules = ctx.gray_rules
    enr.gray_id, enr.gray_id_source = gray.gray_id(rec, enr.query, rules)
    subset = gray.istio_subset(rec.upstream_cluster)
    enr.stage = gray.stage(rec, subset, rules)
    enr.version = gray.version(rec, enr.query, subset, rules)


def path_group_step(rec: AccessRecord, enr: Enrichment, ctx: EnrichContext) -> None:
    if enr.url_path is not None:
        enr.path_group, enr.route = ctx.path_rules.classify(enr.url_path)


def client_ip_step(rec: AccessRecord, enr: Enrichment, ctx: EnrichContext) -> None:
    enr.client_ip = ctx.proxies.client_ip(rec.peer_addr, rec.forwarded_for)


def geo_step(rec: AccessRecord, enr: Enrichment, ctx: EnrichContext) -> None:
    if ctx.geoip is not None and enr.client_ip is not None:
        enr.geo, enr.asn = ctx.geoip.lookup(enr.client_ip)


def trace_step(rec: AccessRecord, enr: Enrichment, ctx: EnrichContext) -> None:
    enr.trace_id, enr.span_id = trace_context(rec)


def service_step(rec: AccessRecord, enr: Enrichment, ctx: EnrichContext) -> None:
    enr.service_name = ctx.service_name or service_from(rec)


def service_from(rec: AccessRecord) -> str | None:
    """The upstream service's short name (Istio cluster host), else the authority host."""
    cluster = rec.upstream_cluster
    if cluster and "|" in cluster:
        host = cluster.rsplit("|", 1)[1]
        if host:
            return host.split(".", 1)[0]
    authority = rec.authority
    if authority:
        return authority.rsplit(":", 1)[0] if "]" not in authority else authority
    return None


DEFAULT_CHAIN: tuple[Step, ...] = (
    url_step,
    gray_step,
    path_group_step,
    client_ip_step,
    geo_step,
    trace_step,
    service_step,
)


def enrich(
    rec: AccessRecord, ctx: EnrichContext, chain: Sequence[Step] = DEFAULT_CHAIN
) -> Enrichment:
    enr = Enrichment()
    for step in chain:
        step(rec, enr, ctx)
    return enr
