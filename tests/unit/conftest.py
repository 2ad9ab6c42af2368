"""Shared helpers for the core's unit tests: sample files, a default context, a fake GeoIP.

Fixture names are prefixed ``core_`` so they never shadow fixtures of other
test modules.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import schemas
from pipeline.core.enrich import EnrichContext, GeoAnswers
from pipeline.core.model import (
    AccessRecord,
    AsnInfo,
    DeadLetter,
    Enrichment,
    GeoInfo,
    InputMessage,
    KafkaCoordinates,
)
from pipeline.core.process import Enriched, Observation, observations, process

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
# The shared sample inputs (one message value per line); a copy lives in the
# fixtures so the suite does not depend on a path outside the repository.
SHARED_SAMPLES = Path("/work/shared/samples")
SAMPLES = FIXTURES / "samples"
T0_NS = 1_795_176_000_000_000_000  # 2026-11-20T12:00:00Z, the samples' day


def compiled_core_in_use() -> bool:
    """Whether this run imports the compiled core and its C module: built (``make
    native``), and not ``make test``'s plain-Python pass (tests/pure.py)."""
    from pipeline import native

    pure = any(isinstance(finder, native._SourceFirst) for finder in sys.meta_path)
    return native.group_library() is not None and not pure


def sample_lines(name: str) -> list[bytes]:
    """The non-empty lines of one sample file."""
    return [line for line in (SAMPLES / name).read_bytes().splitlines() if line.strip()]


def all_sample_lines() -> list[bytes]:
    """Every line of every sample file."""
    return [
        line
        for path in sorted(SAMPLES.iterdir())
        if path.suffix != ".md"
        for line in sample_lines(path.name)
    ]


CORPORA = (
    "envoy-json-format.log",
    "envoy-typed.log",
    "nginx-json.log",
    "nginx-text.log",
    "nginx-variants.log",
    "envoy-text.log",
    "envelopes.log",
)


def corpus_lines() -> list[bytes]:
    """Every valid line we carry: the shared samples and our own corpora."""
    return all_sample_lines() + [line for name in CORPORA for line in fixture_lines(name)]


def fixture_lines(name: str) -> list[bytes]:
    """The non-empty, non-comment lines of one corpus under tests/fixtures."""
    out = []
    for line in (FIXTURES / name).read_bytes().splitlines():
        if line.strip() and not line.startswith(b"#"):
            out.append(line)
    return out


def enriched(raw: bytes | str, ctx: EnrichContext | None = None) -> Enriched:
    """Process one line that must be accepted."""
    if isinstance(raw, str):
        raw = raw.encode()
    result = process(raw, ctx or EnrichContext())
    assert isinstance(result, Enriched), result
    return result


def dead(raw: bytes | str, ctx: EnrichContext | None = None) -> DeadLetter:
    """Process one line that must be rejected."""
    if isinstance(raw, str):
        raw = raw.encode()
    result = process(raw, ctx or EnrichContext())
    assert isinstance(result, DeadLetter), result
    return result


def doc(raw: bytes | str, ctx: EnrichContext | None = None) -> dict[str, Any]:
    return enriched(raw, ctx).document


_ISO_UTC_MILLIS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
_LONG = (-(2**63), 2**63 - 1)


def flatten(document: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted field, value) for every leaf; a geo_point object counts as one leaf."""
    fields = schemas.access_fields()
    for key, value in document.items():
        name = f"{prefix}{key}"
        mapping = fields.get(name)
        if isinstance(value, dict) and not (mapping and mapping["type"] == "geo_point"):
            yield from flatten(value, name + ".")
        else:
            yield name, value


def mapping_problems(document: dict[str, Any]) -> list[str]:
    """Why the index template would not take this document as is (empty: it would)."""
    problems = []
    fields = schemas.access_fields()
    for name, value in flatten(document):
        mapping = fields.get(name)
        if mapping is None:
            problems.append(f"{name}: not mapped")
            continue
        kind = mapping["type"]
        if kind == "keyword":
            # An array of keywords (``tags``) is a keyword field too.
            ok = isinstance(value, str) or (
                isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)
            )
        elif kind == "long":
            ok = type(value) is int and _LONG[0] <= value <= _LONG[1]
        elif kind == "date":
            ok = isinstance(value, str) and _ISO_UTC_MILLIS.fullmatch(value) is not None
        elif kind == "ip":
            ok = isinstance(value, str) and _is_ip(value)
        elif kind == "geo_point":
            ok = (
                isinstance(value, dict)
                and set(value) == {"lat", "lon"}
                and all(type(v) is float for v in value.values())
                and -90 <= value["lat"] <= 90
                and -180 <= value["lon"] <= 180
            )
        else:
            ok = False
        if not ok:
            problems.append(f"{name}: {value!r} is not a valid {kind}")
    return problems


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


class FakeGeo:
    """A GeoLookup answering from a dict; counts lookups."""

    cached_answers: GeoAnswers | None = None  # every lookup is a call

    def __init__(self, answers: dict[str, tuple[GeoInfo | None, AsnInfo | None]]) -> None:
        self.answers = answers
        self.looked_up: list[str] = []

    def lookup(self, ip: str) -> tuple[GeoInfo | None, AsnInfo | None]:
        self.looked_up.append(ip)
        return self.answers.get(ip, (None, None))


FULL_GEO = GeoInfo(
    country_iso_code="US",
    country_name="United States",
    continent_code="NA",
    continent_name="North America",
    region_iso_code="US-CA",
    region_name="California",
    city_name="San Jose",
    lat=37.3388,
    lon=-121.8916,
)
FULL_ASN = AsnInfo(number=7922, organization="Comcast Cable Communications, LLC")


@pytest.fixture
def core_ctx() -> EnrichContext:
    return EnrichContext()


@pytest.fixture
def core_process() -> Callable[[bytes], Enriched | DeadLetter]:
    ctx = EnrichContext()
    return lambda raw: process(raw, ctx)


def observed(record: AccessRecord, enrichment: Enrichment, kafka_ns: int | None) -> Observation:
    """The canary/metrics Observation of one request (``kafka_ns``: the Kafka record time)."""
    msg = InputMessage(None, None, KafkaCoordinates("t", 0, 0), kafka_ns)
    return observations([msg], [Enriched(record, enrichment, b"{}")])[0]
