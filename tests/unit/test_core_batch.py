"""process_batch(): the result of process() for every message, computed a stage at a time."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.document import build_document
from pipeline.core.enrich import DEFAULT_CHAIN, EnrichContext, Step
from pipeline.core.model import AccessRecord, DeadLetter, Enrichment, Reason
from pipeline.core.process import Enriched, process, process_batch
from pipeline.dev.synth import generate
from pipeline.native import loaded_native
from tests.unit.conftest import FULL_ASN, FULL_GEO, FakeGeo, corpus_lines

SEEDS: list[bytes] = corpus_lines() + list(generate(60, seed=5))


def context(**kwargs: object) -> EnrichContext:
    geo = FakeGeo({"73.15.200.7": (FULL_GEO, FULL_ASN), "192.0.2.44": (FULL_GEO, None)})
    return EnrichContext(geoip=geo, max_message_bytes=4096, **kwargs)  # type: ignore[arg-type]


def one_at_a_time(
    raws: Sequence[bytes], ctx: EnrichContext, chain: tuple[Step, ...] = DEFAULT_CHAIN
) -> list[Enriched | DeadLetter]:
    return [process(raw, ctx, chain) for raw in raws]


message = st.one_of(
    st.sampled_from(SEEDS),
    st.binary(max_size=300),
    st.sampled_from(SEEDS).map(lambda seed: seed[: len(seed) // 2]),  # truncated
    st.just(b""),
    st.just(b"x" * 5000),  # too large for the context's limit
)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(message, max_size=40), st.booleans())
def test_same_results_as_process_one_at_a_time(raws: list[bytes], original: bool) -> None:
    ctx = context(include_original=original)
    assert process_batch(raws, ctx) == one_at_a_time(raws, ctx)


def test_the_synth_stream_gives_the_same_documents() -> None:
    raws = list(generate(3000, seed=23))
    ctx = context()
    batch = process_batch(raws, ctx)
    assert batch == one_at_a_time(raws, ctx)
    assert all(isinstance(result, Enriched) for result in batch)


def test_empty_batch() -> None:
    assert process_batch([], context()) == []


def _fails_on(marker: str, exc: Exception) -> Step:
    """A step that raises ``exc`` for requests whose URI contains ``marker``."""

    def step(rec: AccessRecord, enr: Enrichment, ctx: EnrichContext) -> None:
        if rec.uri and marker in rec.uri:
            raise exc

    return step


def _seen_by(log: list[str]) -> Step:
    def step(rec: AccessRecord, enr: Enrichment, ctx: EnrichContext) -> None:
        log.append(rec.uri or "")

    return step


@pytest.mark.parametrize("position", [0, 3, len(DEFAULT_CHAIN)])
def test_a_failing_step_dead_letters_only_its_messages_and_they_skip_the_rest(
    position: int, caplog: pytest.LogCaptureFixture
) -> None:
    raws = list(generate(200, seed=8))
    ctx = context()
    marker = "/play/"
    after: list[str] = []
    chain = list(DEFAULT_CHAIN)
    chain.insert(position, _fails_on(marker, KeyError("boom")))
    chain.append(_seen_by(after))
    with caplog.at_level(logging.ERROR, logger="pipeline.core.process"):
        batch = process_batch(raws, ctx, tuple(chain))
    assert batch == one_at_a_time(raws, ctx, tuple(chain[:-1]))
    failed = [r for r in batch if isinstance(r, DeadLetter)]
    assert failed and all(r.reason is Reason.INTERNAL_ERROR for r in failed)
    assert all("KeyError" in r.detail for r in failed)
    assert any(isinstance(r, Enriched) for r in batch)
    assert not any(marker in uri for uri in after)  # failed messages skipped the later steps
    assert "internal error" in caplog.text


# Compiled (pipeline.native), process_batch calls document_source directly, so
# the patch below cannot reach it; `make test` runs this test in its plain-Python
# pass (tests/pure.py).
@pytest.mark.skipif(
    bool(loaded_native(["pipeline.core.process"])),
    reason="patches a function the compiled core binds",
)
def test_a_document_that_cannot_be_built_is_dead_lettered(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import pipeline.core.process as core

    real = core.document_source

    def build(rec: AccessRecord, enr: Enrichment, include_original: bool = False) -> bytes:
        if rec.status == 404:
            raise ValueError("no document")
        return real(rec, enr, include_original)

    monkeypatch.setattr(core, "document_source", build)
    raws = list(generate(300, seed=3))
    ctx = context()
    with caplog.at_level(logging.ERROR, logger="pipeline.core.process"):
        batch = process_batch(raws, ctx)
    assert batch == one_at_a_time(raws, ctx)
    assert any(isinstance(r, DeadLetter) and "no document" in r.detail for r in batch)


def test_each_document_is_kept_serialised() -> None:
    ctx = context()
    for result in process_batch(list(generate(500, seed=5)), ctx):
        if isinstance(result, Enriched):
            document = build_document(result.record, result.enrichment)
            assert result.source == orjson.dumps(document)
            assert result.document == document


@pytest.mark.skipif(
    bool(loaded_native(["pipeline.core.process"])),
    reason="patches a function the compiled core binds",
)
def test_a_document_json_cannot_hold_is_an_invalid_field(monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.core.process as core

    def unwritable(rec: AccessRecord, enr: Enrichment, include_original: bool = False) -> bytes:
        return orjson.dumps({"status": 2**64})  # orjson's own refusal

    monkeypatch.setattr(core, "document_source", unwritable)
    raw = next(iter(generate(1, seed=3)))
    for result in (process(raw, context()), process_batch([raw], context())[0]):
        assert isinstance(result, DeadLetter) and result.reason is Reason.INVALID_FIELD
        assert result.detail.startswith("document not serialisable: Integer exceeds 64-bit")
