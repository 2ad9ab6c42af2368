"""The core entry point: one raw message value in, a document or a dead letter out.

Never raises for bad input: every failure becomes a DeadLetter with a reason
from the bounded set in :class:`pipeline.model.Reason`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pipeline.document import build_document
from pipeline.enrich import DEFAULT_CHAIN, EnrichContext, Step, enrich
from pipeline.formats.detect import parse_message
from pipeline.model import AccessRecord, DeadLetter, Enrichment, Reason, RejectedInput

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Enriched:
    record: AccessRecord
    enrichment: Enrichment
    document: dict[str, Any]


def process(
    raw: bytes, ctx: EnrichContext, chain: tuple[Step, ...] = DEFAULT_CHAIN
) -> Enriched | DeadLetter:
    try:
        record = parse_message(raw, ctx.max_message_bytes)
        if ctx.include_original:
            record.original = raw.decode("utf-8", "replace").rstrip("\r\n")
        enrichment = enrich(record, ctx, chain)
        return Enriched(
            record, enrichment, build_document(record, enrichment, ctx.include_original)
        )
    except RejectedInput as exc:
        return DeadLetter(exc.reason, exc.detail, raw)
    except Exception as exc:  # a bug must not stop the stream: dead-letter and say so
        log.exception("internal error while enriching a message")
        return DeadLetter(Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"[:500], raw)
