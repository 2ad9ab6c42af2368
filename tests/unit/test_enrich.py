"""The enrichment chain and its context."""

from __future__ import annotations

import orjson
import pytest

from pipeline.config import load_settings
from pipeline.core.enrich import (
    DEFAULT_CHAIN,
    EnrichContext,
    enrich,
    geo_step,
    service_from,
    url_step,
)
from pipeline.core.formats.detect import parse_message
from pipeline.core.model import AccessRecord, Enrichment
from tests.unit.conftest import FULL_ASN, FULL_GEO, FakeGeo, sample_lines

ISTIO = parse_message(sample_lines("istio-default.json.log")[0])


def test_default_chain_on_the_istio_sample() -> None:
    enr = enrich(ISTIO, EnrichContext())
    assert enr.url_path == "/godoc/pkg/fmt"
    assert enr.url_query == "v=1.20"
    assert enr.query == {"v": "1.20"}
    assert (enr.gray_id, enr.gray_id_source) == (None, None)
    assert enr.stage == "stable"
    assert enr.version == "1.20"
    assert (enr.path_group, enr.route) == ("/godoc/pkg", None)
    assert enr.client_ip == "192.0.2.10"
    assert (enr.geo, enr.asn) == (None, None)
    assert (enr.trace_id, enr.span_id) == (None, None)
    assert enr.service_name == "godoc"


def test_geo_step_looks_up_the_client_ip() -> None:
    geo = FakeGeo({"192.0.2.10": (FULL_GEO, FULL_ASN)})
    enr = enrich(ISTIO, EnrichContext(geoip=geo))
    assert geo.looked_up == ["192.0.2.10"]
    assert (enr.geo, enr.asn) == (FULL_GEO, FULL_ASN)


def test_geo_step_skips_records_without_a_client() -> None:
    geo = FakeGeo({})
    enr = Enrichment()
    geo_step(AccessRecord(dataset="nginx.access"), enr, EnrichContext(geoip=geo))
    assert geo.looked_up == []


def test_a_custom_chain_runs_in_order() -> None:
    seen: list[str] = []

    def tag(rec: AccessRecord, enr: Enrichment, ctx: EnrichContext) -> None:
        seen.append(enr.url_path or "-")
        enr.version = "custom"

    enr = enrich(ISTIO, EnrichContext(), (tag, url_step, tag))
    assert seen == ["-", "/godoc/pkg/fmt"]
    assert enr.version == "custom"


def test_one_event_cannot_change_the_query_another_event_sees() -> None:
    """Events of one request target share its memoised query: it refuses changes."""
    first = enrich(ISTIO, EnrichContext())
    with pytest.raises(TypeError):
        first.query["v"] = "changed"
    with pytest.raises(TypeError):
        first.query.update(v="changed")
    assert enrich(ISTIO, EnrichContext()).query == {"v": "1.20"}
    assert enrich(AccessRecord(dataset="x", uri="/p"), EnrichContext()).query == {}


def test_service_name_setting_overrides() -> None:
    assert enrich(ISTIO, EnrichContext(service_name="edge")).service_name == "edge"


@pytest.mark.parametrize(
    ("cluster", "authority", "expected"),
    [
        ("outbound|8080|v1|godoc.default.svc.cluster.local", "go.dev", "godoc"),
        ("outbound|8080|v1|", "go.dev", "go.dev"),
        (None, "go.dev:443", "go.dev"),
        (None, "[2001:db8::1]:443", "[2001:db8::1]:443"),
        ("plain-cluster", None, None),
        (None, None, None),
    ],
)
def test_service_from(cluster: str | None, authority: str | None, expected: str | None) -> None:
    rec = AccessRecord(dataset="envoy.access", upstream_cluster=cluster, authority=authority)
    assert service_from(rec) == expected


def test_context_from_settings() -> None:
    settings = load_settings(
        geoip_city_db="",
        trusted_proxies="203.0.113.0/24",
        gray_id_headers="X-Exp",
        gray_id_header_pattern=r"^[A-Z]{3}$",
        gray_id_query_arg="EXP",
        canary_header="X-Canary",
        canary_header_value="YES",
        version_query_arg="ver",
        path_rules=orjson.dumps([{"match": "^/a/", "group": "/a", "route": "/a/{x}"}]).decode(),
        path_group_depth=1,
        service_name="svc",
        include_original=True,
        max_message_bytes=4096,
    )
    ctx = enrich_context(settings)
    assert ctx.gray_rules.id_headers == ("x-exp",)
    assert ctx.gray_rules.id_query_arg == "exp"
    assert ctx.gray_rules.canary_header == "x-canary"
    assert ctx.gray_rules.canary_header_value == "yes"
    assert ctx.gray_rules.version_query_arg == "ver"
    assert ctx.path_rules.classify("/a/b") == ("/a", "/a/{x}")
    assert ctx.path_rules.classify("/b/c") == ("/b", None)
    assert ctx.proxies.is_trusted("203.0.113.5")
    assert not ctx.proxies.is_trusted("10.0.0.1")
    assert (ctx.service_name, ctx.include_original, ctx.max_message_bytes) == ("svc", True, 4096)

    rec = parse_message(
        b'{"request_uri": "/a/b?EXP=x&ver=9", "status": "200", "remote_addr": "203.0.113.5",'
        b' "http_x_forwarded_for": "192.0.2.1", "http_x_exp": "ABC", "http_x_canary": "yes"}'
    )
    enr = enrich(rec, ctx)
    assert (enr.gray_id, enr.gray_id_source) == ("ABC", "header")
    assert enr.stage == "canary"
    assert enr.version == "9"
    assert enr.client_ip == "192.0.2.1"


def test_default_chain_has_every_step_once() -> None:
    assert len(set(DEFAULT_CHAIN)) == len(DEFAULT_CHAIN) == 7
