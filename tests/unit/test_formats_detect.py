"""Auto-detection: envelopes unwrapped, formats recognised, everything else a bounded reason."""

from __future__ import annotations

import orjson
import pytest

from pipeline.core.formats import detect
from pipeline.core.formats.detect import MAX_ENVELOPE_DEPTH, parse_message
from pipeline.core.model import AccessRecord, Reason
from pipeline.errors import RejectedInput
from tests.unit.conftest import SAMPLES, SHARED_SAMPLES, fixture_lines, sample_lines

ISTIO = sample_lines("istio-default.json.log")[0]
NGINX_JSON = sample_lines("nginx.json.log")[0]
STRUCTURED = sample_lines("nginx-structured.log")[0]


def rejected(raw: bytes, max_bytes: int = 1_048_576) -> RejectedInput:
    with pytest.raises(RejectedInput) as info:
        parse_message(raw, max_bytes)
    return info.value


@pytest.mark.parametrize(
    ("name", "dataset"),
    [
        ("istio-default.json.log", "envoy.access"),
        ("envoy-seed-format.json.log", "envoy.access"),
        ("nginx.json.log", "nginx.access"),
        ("nginx-structured.log", "nginx.access"),
        ("fluent-bit-envelope.json", "envoy.access"),
        ("filebeat-envelope.json", "nginx.access"),
        ("vector-envelope.json", "nginx.access"),
    ],
)
def test_every_sample_is_recognised(name: str, dataset: str) -> None:
    for line in sample_lines(name):
        assert parse_message(line).dataset == dataset


def test_the_fixture_copies_match_the_shared_samples() -> None:
    if not SHARED_SAMPLES.is_dir():
        pytest.skip("no shared samples on this machine")
    for shared in SHARED_SAMPLES.iterdir():
        assert (SAMPLES / shared.name).read_bytes() == shared.read_bytes(), shared.name


def test_envelopes_carry_the_same_record_as_the_bare_line() -> None:
    assert parse_message(sample_lines("fluent-bit-envelope.json")[0]) == parse_message(ISTIO)
    assert parse_message(sample_lines("filebeat-envelope.json")[0]) == parse_message(NGINX_JSON)
    assert parse_message(sample_lines("vector-envelope.json")[0]) == parse_message(STRUCTURED)


def test_fluent_bit_forward_input_puts_an_object_in_log() -> None:
    wrapped = orjson.dumps({"date": 1.5, "log": orjson.loads(ISTIO)})
    assert parse_message(wrapped) == parse_message(ISTIO)


def test_fluent_bit_keeps_the_trailing_newline() -> None:
    wrapped = orjson.dumps({"log": STRUCTURED.decode() + "\n", "stream": "stdout"})
    assert parse_message(wrapped) == parse_message(STRUCTURED)


def test_nested_envelopes_up_to_the_limit() -> None:
    payload: bytes = ISTIO
    for _ in range(MAX_ENVELOPE_DEPTH):
        payload = orjson.dumps({"message": payload.decode(), "source_type": "kafka"})
    assert parse_message(payload) == parse_message(ISTIO)
    too_deep = orjson.dumps({"message": payload.decode(), "source_type": "kafka"})
    assert rejected(too_deep).reason is Reason.UNKNOWN_FORMAT


def test_every_corpus_line_is_recognised() -> None:
    for name in (
        "envoy-json-format.log",
        "envoy-typed.log",
        "nginx-json.log",
        "nginx-text.log",
        "nginx-variants.log",
        "envoy-text.log",
        "envelopes.log",
    ):
        for line in fixture_lines(name):
            assert isinstance(parse_message(line), AccessRecord)


def test_surrounding_whitespace_is_ignored() -> None:
    assert parse_message(b"  \t" + ISTIO + b"\r\n") == parse_message(ISTIO)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", Reason.EMPTY),
        (b"   \r\n", Reason.EMPTY),
        (b'{"log": ""}', Reason.EMPTY),
        (b'{"log": "   "}', Reason.EMPTY),
        (b"{", Reason.INVALID_JSON),
        (b'{"status": "200",}', Reason.INVALID_JSON),
        (b'{"status": 1e400}', Reason.INVALID_JSON),
        (b'{"status": NaN}', Reason.INVALID_JSON),
        (b'{"a": "\\ud800"}', Reason.INVALID_JSON),  # a lone surrogate escape
        (b'{"log": "{broken"}', Reason.INVALID_JSON),
        (b'{"status": "200", "request_uri": "/\xff"}', Reason.INVALID_ENCODING),
        (b"10.0.0.9 - - [20/Nov/2026:12:00:03 +0000] \xc3\x28", Reason.INVALID_ENCODING),
        (b"[1, 2]", Reason.NOT_AN_OBJECT),
        (b'["{}"]', Reason.NOT_AN_OBJECT),
        (b'{"log": [1]}', Reason.UNKNOWN_FORMAT),
        (b'{"log": "[1]"}', Reason.NOT_AN_OBJECT),
        (b"{}", Reason.UNKNOWN_FORMAT),
        (b'{"hello": "world"}', Reason.UNKNOWN_FORMAT),
        (b'{"message": "hello world"}', Reason.UNKNOWN_FORMAT),
        (b"hello world", Reason.UNKNOWN_FORMAT),
        (b"42", Reason.UNKNOWN_FORMAT),
        (b'"a string"', Reason.UNKNOWN_FORMAT),
        (b'{"status": "OK", "request_uri": "/"}', Reason.INVALID_FIELD),
        # Text lines are never invalid_json, whatever they open with.
        (b"[2026-11-20T12:00:00.000Z] something else", Reason.UNKNOWN_FORMAT),
        (b'[2026-11-20T12:00:00.000Z] "GET / HTTP/1.1" 200 - 0 1', Reason.UNKNOWN_FORMAT),
        (b"[error] 31#31: open() failed", Reason.UNKNOWN_FORMAT),
        (b'{"log": "[2026-11-20T12:00:00.000Z] \\"GET /\\" x"}', Reason.UNKNOWN_FORMAT),
        (b"2021/04/01 13:02:31 [error] 31#31: *1 open() failed", Reason.UNKNOWN_FORMAT),
    ],
)
def test_dead_letter_reasons(raw: bytes, reason: Reason) -> None:
    assert rejected(raw).reason is reason


def test_too_large_is_checked_before_anything_else() -> None:
    info = rejected(b"x" * 2001, max_bytes=2000)
    assert info.reason is Reason.TOO_LARGE
    assert "2001" in info.detail
    assert isinstance(parse_message(ISTIO, max_bytes=len(ISTIO)), AccessRecord)


def test_an_object_with_both_formats_keys_goes_to_the_majority() -> None:
    envoy_ish = {"response_code": "200", "upstream_cluster": "x", "status": "500"}
    assert parse_message(orjson.dumps(envoy_ish)).dataset == "envoy.access"
    nginx_ish = {"response_code": "200", "status": "500", "request_uri": "/"}
    assert parse_message(orjson.dumps(nginx_ish)).dataset == "nginx.access"
    generic = {"trace_id": "x", "http_x_a": "1", "arg_v": "2"}
    assert parse_message(orjson.dumps(generic)).dataset == "nginx.access"


def test_the_shape_memo_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detect, "_SHAPES", {})
    monkeypatch.setattr(detect, "_SHAPES_MAX", 8)
    for i in range(50):
        line = orjson.dumps({"status": "200", f"http_x_{i}": "v"})
        assert parse_message(line).headers == {f"x-{i}": "v"}
    assert len(detect._SHAPES) <= 8


def test_huge_key_sets_are_not_memoised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detect, "_SHAPES", {})
    line = orjson.dumps({"status": "200", "http_" + "x" * 20_000: "v"})
    assert parse_message(line).status == 200
    assert detect._SHAPES == {}


def test_key_order_does_not_change_the_result() -> None:
    obj = orjson.loads(ISTIO)
    reordered = dict(reversed(list(obj.items())))
    assert parse_message(orjson.dumps(reordered)) == parse_message(ISTIO)


def test_resolve_message_names_the_format_parser_and_its_arguments() -> None:
    from pipeline.core.formats.envoy import parse_envoy_values
    from pipeline.core.formats.nginx_json import parse_nginx_json_values
    from pipeline.core.formats.nginx_text import parse_nginx_text

    # The JSON formats' parsers take the object's values in key order.
    expected = {
        "istio-default.json.log": parse_envoy_values,
        "fluent-bit-envelope.json": parse_envoy_values,  # the envelope is unwrapped first
        "nginx.json.log": parse_nginx_json_values,
        "filebeat-envelope.json": parse_nginx_json_values,
        "nginx-structured.log": parse_nginx_text,
        "vector-envelope.json": parse_nginx_text,
    }
    for name, parser in expected.items():
        for line in sample_lines(name):
            parse, args = detect.resolve_message(line)
            assert parse is parser, name
            assert parse(*args) == parse_message(line)


def test_resolve_message_rejects_what_parse_message_rejects() -> None:
    for raw in (b"", b"[1]", b"{not json", b'{"a": 1}', b"\xff\xfe"):
        with pytest.raises(RejectedInput) as info:
            detect.resolve_message(raw)
        assert info.value.reason is rejected(raw).reason


def test_envoy_text_is_recognised_bare_and_in_an_envelope() -> None:
    (line,) = fixture_lines("envoy-text.log")[:1]
    bare = parse_message(line)
    assert bare.dataset == "envoy.access"
    wrapped = orjson.dumps({"log": line.decode(), "stream": "stdout"})
    assert parse_message(wrapped) == bare


def test_objects_with_too_many_keys_are_too_large() -> None:
    obj = {f"http_x_{i}": "v" for i in range(detect.MAX_JSON_KEYS + 1)}
    error = rejected(orjson.dumps(obj))
    assert error.reason is Reason.TOO_LARGE
    assert "keys" in error.detail
    del obj["http_x_0"]
    assert isinstance(parse_message(orjson.dumps(obj)), AccessRecord)
