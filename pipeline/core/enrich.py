"""The enrichment chain: small steps with one signature, like structlog's processors.

Every step is ``step(record, enrichment, context) -> None`` and fills in part
of the Enrichment. Lookup data (rules, GeoIP readers) arrives through the
EnrichContext, never through module globals.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from pipeline.core.extract import gray
from pipeline.core.extract.client_ip import (
    DEFAULT_TRUSTED_PROXIES,
    TrustedProxies,
    forwarded_truncated,
)
from pipeline.core.extract.path_group import PathRules, decoded_path
from pipeline.core.extract.trace import trace_context
from pipeline.core.extract.url import first_query_values, query_truncated, split_target
from pipeline.core.formats.values import remember
from pipeline.core.model import AccessRecord, AsnInfo, Enrichment, GeoInfo, ReadOnlyDict


class GeoAnswers:
    """A GeoIP resolver's cached answers, which ``geo_step`` takes without calling it.

    The resolver (``pipeline.geoip.GeoIPResolver``) fills ``entries``, its LRU cache
    (address or network -> (geo, asn)), and sets ``due``, the time on its clock of its
    next database reload check. Until then a cached address is a hit here, in the
    compiled core: ``geo_step`` of a cached address went 320 -> 200 ns (the interpreted
    call, its clock and counter; bench/README.md, "Session 17"). Everything else (not
    cached, an address the resolver skips, a check due) is the resolver's ``lookup``.
    """

    def __init__(self, clock: Callable[[], float], due: float, skipped: Any) -> None:
        # Values are Any: typed as tuples, the compiled code would unbox them, and the
        # resolver's ``skipped`` marker (a tuple told apart by identity) with them.
        self.entries: OrderedDict[Any, Any] = OrderedDict()
        self.hits = 0  # the resolver's geoip_cache_hits_total
        self.clock = clock
        self.due = due
        self.skipped = skipped

    def take(self, ip: str) -> Any:
        """The cached (geo, asn) of this address, counted as a hit; None when the
        resolver's ``lookup`` must answer."""
        entry = self.entries.get(ip)
        if entry is None or entry is self.skipped or self.clock() >= self.due:
            return None
        self.entries.move_to_end(ip)
        self.hits += 1
        return entry


class GeoLookup(Protocol):
    @property
    def cached_answers(self) -> GeoAnswers | None:
        """The answers ``geo_step`` may take without calling ``lookup`` (None: none)."""

    def lookup(self, ip: str) -> tuple[GeoInfo | None, AsnInfo | None]: ...


@dataclass(slots=True)
class EnrichContext:
    """Everything the steps look things up in (``pipeline.config.enrich_context`` makes
    one from the settings)."""

    gray_rules: gray.GrayRules = field(default_factory=gray.GrayRules)
    path_rules: PathRules = field(default_factory=PathRules)
    proxies: TrustedProxies = field(
        default_factory=lambda: TrustedProxies.from_cidrs(DEFAULT_TRUSTED_PROXIES.split(","))
    )
    geoip: GeoLookup | None = None
    service_name: str | None = None
    include_original: bool = False
    max_message_bytes: int = 1_048_576
    # ``geoip.cached_answers``, read once here rather than once per event.
    geo_answers: GeoAnswers | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.geo_answers = self.geoip.cached_answers if self.geoip is not None else None


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
        if query_truncated(enr.url_query):
            enr.truncated = (*enr.truncated, "query_args")


# Request target -> its parts. The same targets come back all the time
# (``/godoc/pkg/fmt?v=1.22``); long ones are not kept (bounded memory).
_TARGETS: dict[str, tuple[str, str | None, ReadOnlyDict]] = {}
_TARGET_MEMO_MAX = 16_384
_TARGET_MEMO_KEY_MAX: Final = 2048


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
    forwarded_for = rec.forwarded_for
    enr.client_ip = ctx.proxies.client_ip(rec.peer_addr, forwarded_for)
    if forwarded_for is not None and forwarded_truncated(forwarded_for):
        enr.truncated = (*enr.truncated, "forwarded_for")


def geo_step(rec: AccessRecord, enr: Enrichment, ctx: EnrichContext) -> None:
    geoip = ctx.geoip
    ip = enr.client_ip
    if geoip is None or ip is None:
        return
    answers = ctx.geo_answers
    if answers is not None:
        cached = answers.take(ip)
        if cached is not None:
            enr.geo, enr.asn = cached
            return
    enr.geo, enr.asn = geoip.lookup(ip)


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


DEFAULT_CHAIN: Final[tuple[Step, ...]] = (
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
