"""Properties of the core under arbitrary and mutated input (hypothesis).

Whatever comes in, ``process`` returns an Enriched or a DeadLetter with a
reason from ``Reason`` — never raises, never ``internal_error`` — and every
document serialises with orjson and holds only mapped fields of the right type
(so client.ip, when present, is a valid IP).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from typing import Any

import orjson
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pipeline.config import DEFAULT_TRUSTED_PROXIES
from pipeline.core.process import Enriched, process
from pipeline.core.enrich import EnrichContext
from pipeline.core.extract.client_ip import TrustedProxies
from pipeline.core.formats.envoy import SIGNATURE_KEYS as ENVOY_KEYS
from pipeline.core.formats.nginx_json import SIGNATURE_KEYS as NGINX_KEYS
from pipeline.core.formats.values import canonical_ip
from pipeline.core.model import DeadLetter, Reason
from pipeline.dev.synth import generate
from tests.unit.conftest import FULL_ASN, FULL_GEO, FakeGeo, corpus_lines, mapping_problems

SEEDS: list[bytes] = corpus_lines() + list(generate(40, seed=11))
CTX = EnrichContext(
    geoip=FakeGeo({"73.15.200.7": (FULL_GEO, FULL_ASN), "192.0.2.44": (FULL_GEO, None)}),
    include_original=True,
    max_message_bytes=64 * 1024,
)
FAST = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def dumps(value: Any) -> bytes:
    """JSON for test inputs: stdlib json, because orjson refuses integers beyond 64 bits."""
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def check(raw: bytes) -> Enriched | DeadLetter:
    result = process(raw, CTX)
    if isinstance(result, DeadLetter):
        assert result.reason in Reason
        assert result.reason is not Reason.INTERNAL_ERROR, result.detail
        assert result.raw == raw
        orjson.dumps(result.to_json_dict())
        return result
    assert isinstance(result, Enriched)
    orjson.dumps(result.document)
    assert mapping_problems(result.document) == []
    client = result.document.get("client", {}).get("ip")
    if client is not None:
        ipaddress.ip_address(client)
    return result


# --- arbitrary input -----------------------------------------------------------


@FAST
@given(st.binary(max_size=2048))
def test_arbitrary_bytes(raw: bytes) -> None:
    check(raw)


@FAST
@given(st.text(max_size=600))
def test_arbitrary_text(line: str) -> None:
    check(line.encode("utf-8", "surrogatepass"))


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(["-", "", "null", "None", "0", "200", "0.004", "0.010, 0.020", "nan", "inf"]),
    st.sampled_from(["10.0.0.1:1", "[::1]:80", "2001:db8::1", "192.0.2.44, 10.0.0.2", "unix:"]),
    st.sampled_from(["2026-11-20T12:00:00.001Z", "1795176000.5", "20/Nov/2026:12:00:03 +0000"]),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
KNOWN_KEYS = sorted(
    ENVOY_KEYS
    | NGINX_KEYS
    | {
        "method", "path", "protocol", "bytes_sent", "duration", "user_agent", "request_id",
        "time", "cookie", "b3", "x_go_stage", "x_b3_spanid", "http_x_abtest_id",
        "http_x_gray_id", "http_traceparent", "http_cookie", "cookie_go_canary", "arg_v",
        "arg_abt", "uri", "args", "request_length", "upstream_addr", "http_host",
        "log", "message", "source_type", "@metadata", "@timestamp",
    }
)  # fmt: skip
access_log_object = st.dictionaries(
    st.sampled_from(KNOWN_KEYS) | st.text(max_size=12), json_value, max_size=14
)


@FAST
@given(access_log_object)
def test_arbitrary_objects_with_access_log_keys(obj: dict[str, Any]) -> None:
    check(dumps(obj))


@FAST
@given(access_log_object)
def test_arbitrary_objects_inside_envelopes(obj: dict[str, Any]) -> None:
    line = json.dumps(obj)
    check(dumps({"log": line}))
    check(dumps({"message": line, "source_type": "file"}))
    check(dumps({"@metadata": {"beat": "filebeat"}, "message": obj}))


text_field = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"]) | st.sampled_from('"\\x -[]'),
    max_size=30,
)


@FAST
@given(
    st.lists(text_field, min_size=9, max_size=9),
    st.sampled_from(["", ' /p?v=1 v=1 version="1" region="192.0.2.44"', " rt=x urt=1,2 k=v"]),
)
def test_nginx_text_lines_built_from_arbitrary_parts(parts: list[str], tail: str) -> None:
    remote, user, when, request, status, size, referer, agent, extra = parts
    line = (
        f'{remote} - {user} [{when}] "{request}" {status} {size} "{referer}" "{agent}"{tail}{extra}'
    )
    check(line.encode())


# --- mutated valid lines -------------------------------------------------------


@FAST
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0), st.integers(1, 255)), max_size=6))
def test_byte_flips(seed: bytes, flips: list[tuple[int, int]]) -> None:
    raw = bytearray(seed)
    for position, mask in flips:
        raw[position % len(raw)] ^= mask
    check(bytes(raw))


@FAST
@given(st.sampled_from(SEEDS), st.integers(0), st.integers(0))
def test_truncations(seed: bytes, start: int, length: int) -> None:
    start %= len(seed) + 1
    check(seed[:start])
    check(seed[start : start + length % (len(seed) + 1)])


@FAST
@given(st.sampled_from(SEEDS), st.integers(0), st.text(min_size=1, max_size=20))
def test_injected_unicode(seed: bytes, position: int, injected: str) -> None:
    position %= len(seed) + 1
    check(seed[:position] + injected.encode("utf-8", "surrogatepass") + seed[position:])


DIGITS = re.compile(rb"\d+")
numberish = st.one_of(
    st.integers(min_value=0, max_value=10**40).map(lambda n: str(n).encode()),
    st.sampled_from([b"nan", b"inf", b"-1", b"1e400", b"00000000000", b"9" * 30, b"0.5", b""]),
)


@FAST
@given(st.sampled_from(SEEDS), st.integers(0), numberish)
def test_numbers_inflated(seed: bytes, which: int, replacement: bytes) -> None:
    """Years, statuses, sizes, durations, ports, offsets: any digit run may become absurd."""
    runs = list(DIGITS.finditer(seed))
    assume(runs)
    run = runs[which % len(runs)]
    check(seed[: run.start()] + replacement + seed[run.end() :])


JSON_SEEDS = [s for s in SEEDS if s.startswith(b"{")]


def mutate_object(obj: Any, draw: Callable[[Any], Any], depth: int = 0) -> Any:
    """Delete keys, swap value types, inject unicode — recursively into envelopes."""
    if not isinstance(obj, dict) or not obj:
        return obj
    out = {}
    for key, value in obj.items():
        action = draw(st.sampled_from(["keep", "keep", "delete", "swap", "unicode", "recurse"]))
        if action == "delete":
            continue
        if action == "swap":
            value = draw(json_value)
        elif action == "unicode" and isinstance(value, str):
            at = draw(st.integers(0, len(value)))
            value = value[:at] + draw(st.text(min_size=1, max_size=8)) + value[at:]
        elif action == "recurse" and depth < 3:
            if isinstance(value, dict):
                value = mutate_object(value, draw, depth + 1)
            elif isinstance(value, str) and value.startswith("{"):
                try:
                    inner = orjson.loads(value)
                except orjson.JSONDecodeError:
                    pass
                else:
                    value = json.dumps(mutate_object(inner, draw, depth + 1))
        out[key] = value
    return out


@FAST
@given(st.sampled_from(JSON_SEEDS), st.data())
def test_json_mutations(seed: bytes, data: st.DataObject) -> None:
    mutated = mutate_object(orjson.loads(seed), data.draw)
    check(dumps(mutated))


# --- client IP against a reference implementation -------------------------------

PROXIES = TrustedProxies.from_cidrs(DEFAULT_TRUSTED_PROXIES.split(","))
TRUSTED_NETS = [ipaddress.ip_network(c) for c in DEFAULT_TRUSTED_PROXIES.split(",")]

xff_entry = st.one_of(
    st.ip_addresses().map(str),
    st.sampled_from(["10.0.0.2", "192.168.1.1", "::1", "fd00::5", "127.0.0.1", "172.16.0.9"]),
    st.sampled_from(["garbage", "", "unknown", "01.2.3.4", "1.2.3.4:80", "[2001:db8::1]:443"]),
)


def reference_client_ip(peer: str | None, entries: list[str]) -> str | None:
    """DESIGN's rule, written the slow and obvious way."""

    def parse(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        value = value.strip()
        if value.startswith("["):
            value = value[1 : value.find("]")] if "]" in value else ""
        elif value.count(":") == 1:
            value = value.split(":")[0]
        try:
            ip = ipaddress.ip_address(value)
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        return ip

    def trusted(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(ip.version == net.version and ip in net for net in TRUSTED_NETS)

    peer_ip = parse(peer) if peer else None
    if peer_ip is not None and not trusted(peer_ip):
        return str(peer_ip)
    leftmost = None
    for entry in reversed(entries):
        ip = parse(entry)
        if ip is None:
            continue
        if not trusted(ip):
            return str(ip)
        leftmost = ip
    chosen = leftmost if leftmost is not None else peer_ip
    return None if chosen is None else str(chosen)


@settings(max_examples=400, deadline=None)
@given(st.none() | xff_entry, st.lists(xff_entry, max_size=5))
def test_client_ip_matches_the_reference(peer: str | None, entries: list[str]) -> None:
    assume(all("," not in e for e in entries))
    xff = ", ".join(entries) if entries else None
    assert PROXIES.client_ip(peer, xff) == reference_client_ip(peer, entries)


@settings(max_examples=400, deadline=None)
@given(st.ip_addresses())
def test_canonical_ip_agrees_with_ipaddress(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    expected = ip
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        expected = ip.ipv4_mapped
    assert canonical_ip(str(ip)) == str(expected)
    if isinstance(ip, ipaddress.IPv6Address):
        assert canonical_ip(ip.exploded.upper()) == str(expected)
        assert canonical_ip(f"[{ip}]:443") == str(expected)
    else:
        assert canonical_ip(f"{ip}:8080") == str(expected)
