"""Per-field limits (README, "Limits"): a cut says so in ``tags``; what cannot be
cut is a dead letter with the reason."""

from __future__ import annotations

import orjson
import pytest

from pipeline.core.formats.values import (
    MAX_COOKIES,
    MAX_FORWARDED_HOPS,
    MAX_JSON_KEYS,
    MAX_LONG,
    MAX_QUERY_ARGS,
    MAX_TAIL_FIELDS,
)
from pipeline.core.model import Reason
from tests.unit.conftest import dead, doc

LINE = '10.0.0.9 - - [20/Nov/2026:12:00:03 +0000] "GET {target} HTTP/1.1" 200 5 "-" "curl"{tail}'


def nginx(target: str = "/", tail: str = "") -> str:
    return LINE.format(target=target, tail=tail)


def test_nothing_cut_no_tags() -> None:
    assert "tags" not in doc(nginx("/?a=1", ' "73.15.200.7"'))


def test_query_args_beyond_the_limit_are_cut_and_tagged() -> None:
    args = "&".join(f"a{i}=1" for i in range(MAX_QUERY_ARGS)) + "&abt=late0001"
    document = doc(nginx("/?" + args))
    assert document["tags"] == ["truncated_query_args"]
    assert "id" not in document["gray"]  # the arg after the limit is not read
    exactly = "&".join(f"a{i}=1" for i in range(MAX_QUERY_ARGS))
    assert "tags" not in doc(nginx("/?" + exactly))


def test_forwarded_for_walks_the_nearest_hops_only() -> None:
    # The client-written left end is beyond the limit; the walk stops at the limit
    # and, all of them trusted, answers the left-most it read.
    hops = ["198.51.100.7"] + ["10.0.0.2"] * MAX_FORWARDED_HOPS
    document = doc(nginx(tail=' "' + ", ".join(hops) + '"'))
    assert document["tags"] == ["truncated_forwarded_for"]
    assert document["client"]["ip"] == "10.0.0.2"
    exactly = ", ".join(hops[1:])
    assert "tags" not in doc(nginx(tail=f' "{exactly}"'))


def test_cookies_beyond_the_limit_are_cut_and_tagged() -> None:
    cookies = "; ".join(f"c{i}=1" for i in range(MAX_COOKIES)) + "; go_canary=1"
    line = orjson.dumps({"request_uri": "/", "status": "200", "http_cookie": cookies})
    document = doc(line)
    assert document["tags"] == ["truncated_cookies"]
    assert document["gray"]["stage"] == "stable"  # the cookie after the limit is not read
    envoy = orjson.dumps({"start_time": "2026-11-20T12:00:00.000Z", "path": "/", "cookie": cookies})
    assert doc(envoy)["tags"] == ["truncated_cookies"]


def test_json_objects_with_too_many_keys_are_dead_letters() -> None:
    obj = {f"http_x_h{i}": "1" for i in range(MAX_JSON_KEYS + 1)}
    letter = dead(orjson.dumps(obj))
    assert letter.reason is Reason.TOO_LARGE
    assert str(MAX_JSON_KEYS) in letter.detail


def test_too_many_text_fields_are_unknown_format() -> None:
    tail = " " + " ".join(f"k{i}=v" for i in range(MAX_TAIL_FIELDS + 1))
    assert dead(nginx(tail=tail)).reason is Reason.UNKNOWN_FORMAT
    assert "tags" not in doc(nginx(tail=" " + " ".join(f"k{i}=v" for i in range(MAX_TAIL_FIELDS))))


def test_nesting_beyond_orjson_s_limit_is_invalid_json() -> None:
    deep = b'{"log": ' * 2000 + b"1" + b"}" * 2000
    assert dead(deep).reason is Reason.INVALID_JSON


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ({"request_uri": "/", "status": str(MAX_LONG + 1)}, Reason.INVALID_FIELD),
        ({"request_uri": "/", "status": "200", "body_bytes_sent": "1e30"}, Reason.INVALID_FIELD),
    ],
)
def test_numbers_beyond_a_long_are_dead_letters(obj: dict[str, str], reason: Reason) -> None:
    assert dead(orjson.dumps(obj)).reason is reason


def test_durations_and_timestamps_beyond_range_are_left_out() -> None:
    obj = {"request_uri": "/", "status": "200", "request_time": "1e300", "msec": "1e300"}
    document = doc(orjson.dumps(obj))
    assert "duration" not in document["event"]
    assert "@timestamp" not in document
