"""Conformance with other log parsers' own nginx test cases (``../shared/peer-corpora``).

Every case of every corpus runs through the core (``pipeline.core.process``); each
field the peer defines is compared with grayscope's field of the same meaning, or
listed in ``NOT_COMPARED`` with the reason. Where grayscope differs on purpose, the
comparison is of the matching field (``INTENDED_DIFFERENCES``):

- client IP: peers report ``$remote_addr``; grayscope reports it as ``source.ip``
  (compared) and derives ``client.ip`` from the forwarding chain under the
  trusted-proxy rules (checked against what those rules give);
- ``@timestamp`` is the request start: the peers' log time (the response end)
  minus ``$request_time``; compared as ``@timestamp + event.duration``;
- ``-`` and ``""`` mean "not logged": the peer keeps the marker, grayscope
  leaves the field out;
- a request line that is not ``METHOD target [protocol]`` (TLS bytes, empty):
  the peer keeps it raw, grayscope emits no method/target (``event.original``
  keeps the line);
- nginx error-log lines are no access logs: dead-lettered ``unknown_format``
  (Vector parses them with its separate ``error`` format);
- a single field after the user agent is read as ``main``'s
  ``"$http_x_forwarded_for"``; Vector's example calls the one in its test
  ``compression`` (``$gzip_ratio``): not an address, so it changes nothing.

The corpora live beside the repository (``../shared``, as in CI); without that
folder the tests are skipped and say why.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from pipeline.core.process import Enriched, process
from pipeline.core.document import http_version
from pipeline.core.enrich import EnrichContext
from pipeline.core.formats.nginx_text import split_request
from pipeline.core.model import DeadLetter, Reason
from tests.unit.conftest import REPO

PEER_CORPORA = REPO.parent / "shared" / "peer-corpora"
CORPUS_FILES = (
    "vector-vrl/parse_nginx_log.cases.json",
    "logstash-patterns-core/httpd_spec.cases.json",
    "fluentd/test_parser_nginx.cases.json",
)
CTX = EnrichContext(include_original=True)

INTENDED_DIFFERENCES = {
    "client_ip": "client.ip from the forwarding chain (trusted proxies), source.ip = $remote_addr",
    "timestamp": "@timestamp = request start = log time - $request_time",
    "missing_markers": '"-" and "" are left out, not kept',
    "raw_request_line": "a request line that is not METHOD target [protocol] gives no method/url",
    "error_log": "nginx error-log lines are dead-lettered unknown_format",
    "trailing_field": "one field after the user agent is main's X-Forwarded-For",
}
# Peer fields with no grayscope field of the same meaning (not compared), and why.
NOT_COMPARED = {
    "user": "$remote_user: not in the document contract",
    "remote_user": "$remote_user: not in the document contract",
    "user.name": "$remote_user: not in the document contract",
    "host": "fluentd's second field (nginx's literal '-' ident)",
    "request_length": "$request_length: read (bytes_received), not in the document",
    "upstream_response_length": "not in the document",
    "proxy_alternative_upstream_name": "not in the document",
    "compression": "INTENDED_DIFFERENCES['trailing_field']",
}


def _missing(value: Any) -> bool:
    return value is None or value in ("-", "")


def _get(doc: dict[str, Any], dotted: str) -> Any:
    value: Any = doc
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _log_time_ns(doc: dict[str, Any]) -> int:
    """The log's own time back from the document: @timestamp (start) + duration."""
    start = datetime.fromisoformat(doc["@timestamp"].replace("Z", "+00:00"))
    start_ns = int(start.timestamp()) * 1_000_000_000 + start.microsecond * 1000
    return start_ns + (_get(doc, "event.duration") or 0)


def _instant_ns(value: str, fmt: str | None = None) -> int:
    parsed = (
        datetime.strptime(value, fmt)
        if fmt
        else datetime.fromisoformat(value.replace("Z", "+00:00"))
    )
    return int(parsed.timestamp()) * 1_000_000_000


def _client_under_the_rules(peer: str, forwarded_for: str | None) -> str:
    """What real_ip_recursive with the default trusted proxies makes of peer + XFF."""
    return CTX.proxies.client_ip(peer, forwarded_for) or peer


Check = Callable[[dict[str, Any], Any], None]


def same(field: str, convert: Callable[[Any], Any] = lambda v: v) -> Check:
    """The peer's value equals the document's ``field`` (absent when the peer says missing)."""

    def check(doc: dict[str, Any], peer: Any) -> None:
        ours = _get(doc, field)
        if _missing(peer):
            assert ours is None, f"{field}: peer has nothing, we have {ours!r}"
        else:
            assert ours == convert(peer), f"{field}: peer {peer!r}, we {ours!r}"

    return check


def request_line(doc: dict[str, Any], peer: Any) -> None:
    method, target, protocol = split_request(peer)
    if method is None or target is None:  # INTENDED_DIFFERENCES["raw_request_line"]
        assert _get(doc, "http.request.method") is None
        assert _get(doc, "event.original") is not None
        return
    assert _get(doc, "http.request.method") == method
    assert _get(doc, "url.original") == target
    assert _get(doc, "http.version") == http_version(protocol)


def request_time(doc: dict[str, Any], peer: Any) -> None:
    assert _get(doc, "event.duration") == round(float(peer) * 1e9)


def upstream_time(doc: dict[str, Any], peer: Any) -> None:
    assert _get(doc, "upstream.duration") == round(float(peer) * 1e9)


def rfc3339_log_time(doc: dict[str, Any], peer: Any) -> None:
    assert _log_time_ns(doc) == _instant_ns(peer)  # INTENDED_DIFFERENCES["timestamp"]


def forwarded_for(doc: dict[str, Any], peer: Any) -> None:
    # INTENDED_DIFFERENCES["client_ip"]: the chain decides client.ip.
    source = _get(doc, "source.ip")
    expected = _client_under_the_rules(source, None if _missing(peer) else peer)
    assert _get(doc, "client.ip") == expected
    ipaddress.ip_address(expected)


VECTOR_FIELDS: dict[str, Check] = {
    "client": same("source.ip"),
    "remote_addr": same("source.ip"),
    "timestamp": rfc3339_log_time,
    "request": request_line,
    "status": same("http.response.status_code"),
    "size": same("http.response.body.bytes"),
    "body_bytes_size": same("http.response.body.bytes"),
    "referer": same("http.request.referrer"),
    "http_referer": same("http.request.referrer"),
    "agent": same("user_agent.original"),
    "http_user_agent": same("user_agent.original"),
    "http_x_forwarded_for": forwarded_for,
    "request_time": request_time,
    "proxy_upstream_name": same("upstream.cluster"),
    "upstream_addr": same("upstream.address"),
    "upstream_response_time": upstream_time,
    "upstream_status": same("upstream.status_code"),
    "req_id": same("http.request.id"),
}
FLUENTD_FIELDS: dict[str, Check] = {
    "remote": same("source.ip"),
    "method": same("http.request.method"),
    "path": same("url.original"),
    "code": same("http.response.status_code", int),
    "size": same("http.response.body.bytes", int),
    "referer": same("http.request.referrer"),
    "agent": same("user_agent.original"),
    "http_x_forwarded_for": forwarded_for,
}
LOGSTASH_FIELDS: dict[str, Check] = {
    "source.address": same("source.ip"),
    "http.request.method": same("http.request.method"),
    "http.request.referrer": same("http.request.referrer"),
    "http.response.body.bytes": same("http.response.body.bytes"),
    "http.response.status_code": same("http.response.status_code"),
    "http.version": same("http.version"),
    "url.original": same("url.original"),
    "user_agent.original": same("user_agent.original"),
}


def _flatten(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, dict):
            out.update(_flatten(item, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = item
    return out


def _cases() -> list[Any]:
    if not PEER_CORPORA.is_dir():
        return [
            pytest.param(
                None,
                marks=pytest.mark.skip(
                    reason=f"peer corpora not found at {PEER_CORPORA} (../shared beside the clone)"
                ),
                id="no-peer-corpora",
            )
        ]
    out = []
    for name in CORPUS_FILES:
        data = json.loads((PEER_CORPORA / name).read_text())
        for case in data["cases"]:
            out.append(pytest.param((name, case), id=f"{name.split('/')[0]}:{case['name']}"))
    return out


def _run(line: str) -> Enriched | DeadLetter:
    result = process(line.encode(), CTX)
    if isinstance(result, DeadLetter):
        assert result.reason is not Reason.INTERNAL_ERROR, result.detail
    return result


def _compare(doc: dict[str, Any], peer: dict[str, Any], checks: dict[str, Check]) -> int:
    compared = 0
    for key, value in peer.items():
        if key in NOT_COMPARED:
            continue
        assert key in checks, f"peer field {key!r}: neither compared nor in NOT_COMPARED"
        checks[key](doc, value)
        compared += 1
    return compared


@pytest.mark.parametrize("entry", _cases())
def test_peer_case(entry: tuple[str, dict[str, Any]]) -> None:
    name, case = entry
    if name.startswith("vector-vrl"):
        result = _run(case["value"])
        if "error" in case or case["format"] == "error":
            # INTENDED_DIFFERENCES["error_log"] (and Vector's own rejections).
            assert isinstance(result, DeadLetter), case["value"]
            assert result.reason is Reason.UNKNOWN_FORMAT
            return
        assert isinstance(result, Enriched), result
        assert _compare(result.document, case["want"], VECTOR_FIELDS) >= 5
    elif name.startswith("fluentd"):
        result = _run(case["line"])
        assert isinstance(result, Enriched), result
        doc = result.document
        assert _compare(doc, case["record"], FLUENTD_FIELDS) >= 5
        assert _log_time_ns(doc) == _instant_ns(case["time"], case["time_format"])
    else:
        result = _run(case["message"])
        assert isinstance(result, Enriched), result
        doc = result.document
        _compare(doc, _flatten(case["expect_ecs"]), LOGSTASH_FIELDS)
        for absent in case.get("expect_ecs_absent", []):
            assert _get(doc, absent) is None, absent


def test_the_corpora_are_all_read() -> None:
    if not PEER_CORPORA.is_dir():
        pytest.skip(f"peer corpora not found at {PEER_CORPORA} (../shared beside the clone)")
    listed = {str(p.relative_to(PEER_CORPORA)) for p in PEER_CORPORA.rglob("*.json")}
    assert listed == set(CORPUS_FILES), "a corpus file is not compared"
