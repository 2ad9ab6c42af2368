"""The C reader of flat JSON lines (``_read.flat_json``, pipeline/core/_read.c) reads
exactly what orjson reads, or leaves the line to orjson.

Format detection (pipeline/core/formats/detect.py) takes a line's keys and values from
it where the core is compiled; orjson stays the definition. Whatever the input, when
the reader answers, its keys are ``tuple(d)`` and its values ``tuple(d.values())`` of
orjson's dict ``d``, with the same types (an int stays an int, -0.0 stays -0.0).
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.formats import detect
from pipeline.dev.synth import generate
from tests.unit.conftest import all_sample_lines, compiled_core_in_use

if not compiled_core_in_use():
    pytest.skip("the C readers are not in use (plain-Python core)", allow_module_level=True)

from pipeline.core import _read

flat_json = _read.flat_json


def same(a: Any, b: Any) -> bool:
    """Equal and of the same type; floats bit for bit (-0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return math.copysign(1.0, a) == math.copysign(1.0, b) and (a == b or a != a)
    return bool(a == b)


def orjson_reading(data: bytes | str) -> tuple[tuple[str, ...], tuple[Any, ...]] | str:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return "refused"
    if not isinstance(value, dict):
        return "not an object"
    return tuple(value), tuple(value.values())


def check(data: bytes | str) -> bool:
    """The property; True when the reader answered (not left it to orjson)."""
    read = flat_json(data)
    if read is None:
        return False
    expected = orjson_reading(data)
    assert not isinstance(expected, str), (data, read, expected)
    keys, values = read
    assert keys == expected[0], data
    assert len(values) == len(expected[1]) and all(
        same(a, b) for a, b in zip(values, expected[1], strict=True)
    ), (data, values, expected[1])
    return True


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.integers(-(10**19), 10**19),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.text(st.characters(max_codepoint=0x7F), max_size=30),
    st.sampled_from(["", "-", '"', "\\", "\x00", "\x1f", "\u2028", "é", "😀", "\ud800"]),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=2),
    st.dictionaries(st.text(max_size=5), scalars, max_size=2),
)
objects = st.dictionaries(st.text(max_size=12), values, max_size=12)


def serialised(obj: dict[str, Any], style: int) -> bytes:
    """The object as JSON, written in one of several ways shippers write it."""
    if style == 0:
        return json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")
    if style == 1:
        return json.dumps(obj, ensure_ascii=True).encode()  # \\uXXXX escapes, surrogates too
    if style == 2:
        return json.dumps(obj, indent=1, separators=(" , ", " : ")).encode()
    try:
        return orjson.dumps(obj)
    except TypeError:  # beyond 64 bits, lone surrogates
        return json.dumps(obj, ensure_ascii=True).encode()


FAST = settings(
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FAST
@given(obj=objects, style=st.integers(0, 3))
def test_any_object_is_read_as_orjson_reads_it(obj: dict[str, Any], style: int) -> None:
    data = serialised(obj, style)
    check(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    check(text)  # an envelope's line arrives as a str


@FAST
@given(
    obj=st.dictionaries(st.text(max_size=8), scalars, max_size=8),
    at=st.integers(0, 10_000),
    edit=st.sampled_from(["insert", "delete", "replace"]),
    byte=st.one_of(
        st.sampled_from(list(b'{}[]":,\\ \t\n\r\x0b\x0c-+.eE0159tfnu\x00\x7f\x80\xc3\xa9\xed\xff')),
        st.integers(0, 255),
    ),
)
def test_a_damaged_line_is_read_as_orjson_reads_it_or_left_to_it(
    obj: dict[str, Any], at: int, edit: str, byte: int
) -> None:
    data = bytearray(serialised(obj, 0))
    at %= len(data) + 1
    if edit == "insert":
        data[at:at] = bytes([byte])
    elif at < len(data):
        data[at : at + 1] = b"" if edit == "delete" else bytes([byte])
    check(bytes(data))


@pytest.mark.parametrize(
    "data",
    [
        b"{}",
        b' { "a" : 1 , "b" : "x" } ',
        b'{"a":-0,"b":-0.0,"c":0.1,"d":123456789012345678,"e":1.7976931348623157}',
        b'{"a":"\\u00e9\\u2028\\n\\t\\b\\f\\r\\/\\\\\\"","b":"\\u0000"}',
        '{"k\u00e9y":"v\u00e9\U0001f600"}'.encode(),
        b'{"a":true,"b":false,"c":null}',
    ],
)
def test_the_usual_values_are_read_here(data: bytes) -> None:
    assert check(data)


@pytest.mark.parametrize(
    "data",
    [
        b'{"a":1,"a":2}',  # a key twice: orjson keeps the last value
        b'{"a":{"b":1}}',  # nested values
        b'{"a":[1]}',
        b'{"a":1e5}',  # exponents
        b'{"a":1234567890123456789}',  # beyond 18 digits
        b'{"a":"\\ud83d\\ude00"}',  # surrogate escapes, a pair too
        b'{"a":"\\ud800"}',
        b'{"a":"\xff"}',  # not UTF-8
        b'{"a":"\xed\xa0\x80"}',  # an encoded surrogate
        b'{"a":"x\ny"}',  # a raw control character
        b'{"a":01}',
        b'{"a":1.}',
        b'{"a":.5}',
        b'{"a":+1}',
        b'{"a":1,}',
        b'{"a":1} x',
        b'{"a\\"b":1}',  # escapes in keys
        b"[1]",
        b'{"a":1\x0b}',  # not JSON whitespace
        b'{"a":tru}',
        b'{"a":"x}',
    ],
)
def test_anything_else_is_left_to_orjson(data: bytes) -> None:
    assert flat_json(data) is None


def test_a_line_with_more_keys_than_it_reads_is_left_to_orjson() -> None:
    wide = orjson.dumps({f"k{i}": i for i in range(300)})
    assert flat_json(wide) is None
    assert check(orjson.dumps({f"k{i}": i for i in range(256)}))


def test_lines_with_the_same_keys_share_one_key_tuple() -> None:
    first = flat_json(b'{"start_time":"a","method":"GET"}')
    second = flat_json(b'{"start_time":"b","method":"PUT"}')
    assert first is not None and second is not None
    assert first[0] is second[0]
    # Many formats in one stream: each still read right once its tuple is evicted.
    for i in range(40):
        assert check(orjson.dumps({f"f{i}": i, "x": "y"}))
    assert check(b'{"start_time":"c","method":"GET"}')


def test_every_flat_sample_and_synthetic_line_is_read_here() -> None:
    """The usual lines do not fall back: the shipped samples and the benchmark's stream,
    and the lines their envelopes carry."""
    lines = all_sample_lines() + list(generate(2000, seed=3))
    read = 0
    for line in lines:
        value = orjson_reading(line.strip())
        if isinstance(value, str):
            continue
        flat = all(not isinstance(v, (dict, list)) for v in value[1])
        assert check(line.strip()) == flat, line
        read += flat
        for inner in value[1]:
            if isinstance(inner, str) and inner.startswith("{"):
                assert check(inner), inner
    assert read > 1000


def test_detection_uses_the_c_reader() -> None:
    assert detect.FLAT_JSON is flat_json
