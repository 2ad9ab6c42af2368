"""Coverage-guided fuzzing of the core entry point with atheris (``make fuzz``).

Every input goes through ``pipeline.core.process`` exactly as the worker calls
it, with the message size limit and ``event.original`` on, and through
``process_batch`` in a batch of its lines. The oracle: a document that
serialises and holds only mapped fields of the right type, or a dead letter
with a reason from the bounded set — never an exception, never
``internal_error``. Hangs are libFuzzer's ``-timeout`` (the Makefile passes 10 s).

The plain-Python core is fuzzed (atheris instruments Python bytecode; the
mypyc build runs the same code, and ``make test`` checks both agree). Seeds are
``tests/fuzz/corpus`` (kept in the repo); what the fuzzer finds goes to the
work directory named first on the command line, outside the repo.

Not part of ``make test``: it needs the ``fuzz`` extra (``pip install -e .[fuzz]``).
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(_ROOT))

from pipeline.native import prefer_sources  # noqa: E402

prefer_sources()

import atheris  # type: ignore[import-not-found]  # noqa: E402
import orjson  # noqa: E402

with atheris.instrument_imports(include=["pipeline"]):
    from pipeline.core.process import Enriched, process, process_batch
    from pipeline.core.enrich import EnrichContext
    from pipeline.core.model import DeadLetter, Reason

from tests.unit.conftest import FULL_ASN, FULL_GEO, FakeGeo, mapping_problems  # noqa: E402

CTX = EnrichContext(
    geoip=FakeGeo({"73.15.200.7": (FULL_GEO, FULL_ASN), "192.0.2.44": (FULL_GEO, None)}),
    include_original=True,
    max_message_bytes=64 * 1024,
)


def check(result: Enriched | DeadLetter, raw: bytes) -> None:
    if isinstance(result, DeadLetter):
        if result.reason is Reason.INTERNAL_ERROR:
            raise AssertionError(f"internal_error: {result.detail}")
        assert result.raw == raw
        orjson.dumps(result.to_json_dict())
        return
    orjson.dumps(result.document)
    problems = mapping_problems(result.document)
    assert not problems, problems


def test_one_input(data: bytes) -> None:
    check(process(data, CTX), data)
    lines = data.split(b"\n")
    if len(lines) > 1:
        for line, result in zip(lines, process_batch(lines, CTX), strict=True):
            check(result, line)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
