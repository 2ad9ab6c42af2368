"""Dead-letter topic: one record per rejected input.

The record value is the ORIGINAL message bytes (so replaying a fixed record
is a plain produce back to the input topic) and the record key is the
original key. Why and where from travel as Kafka headers:

- ``grayscope.reason``  - bounded reason code (``invalid_json``, ``mapping_rejected``, ...)
- ``grayscope.detail``  - human-readable detail (parser error, the store's error)
- ``grayscope.source.topic`` / ``.partition`` / ``.offset`` - where the input was read
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pipeline.errors import DeadLetterError
from pipeline.core.model import DeadLetter, KafkaCoordinates

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]
MAX_DETAIL_BYTES = 4096


class RecordProducer(Protocol):
    async def send_batch(
        self, topic: str, records: Sequence[tuple[bytes | None, bytes, Headers]]
    ) -> None:
        """Send and wait until every record is acknowledged; raise DeadLetterError if not."""


def dead_letter_headers(letter: DeadLetter, source: KafkaCoordinates | None) -> Headers:
    headers: Headers = [
        ("grayscope.reason", letter.reason.value.encode()),
        ("grayscope.detail", letter.detail.encode("utf-8", "replace")[:MAX_DETAIL_BYTES]),
    ]
    if source is not None:
        headers += [
            ("grayscope.source.topic", source.topic.encode()),
            ("grayscope.source.partition", str(source.partition).encode()),
            ("grayscope.source.offset", str(source.offset).encode()),
        ]
    return headers


@dataclass(slots=True)
class DeadLetterStats:
    dead_lettered_total: dict[str, int] = field(default_factory=dict)
    dlq_send_retries_total: int = 0


class DeadLetterSink:
    """Writes dead letters and waits for the broker's ack, retrying for as long as it takes."""

    def __init__(
        self,
        producer: RecordProducer,
        topic: str,
        retry_initial: float = 0.2,
        retry_max: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._sleep = sleep
        self.stats = DeadLetterStats()

    async def send(
        self, letters: Sequence[tuple[DeadLetter, KafkaCoordinates | None, bytes | None]]
    ) -> None:
        """(letter, source coordinates, original key) for each rejected input."""
        if not letters:
            return
        records = [
            (key, letter.raw, dead_letter_headers(letter, source))
            for letter, source, key in letters
        ]
        delay = self._retry_initial
        while True:
            try:
                await self._producer.send_batch(self._topic, records)
                break
            except DeadLetterError as exc:
                # An unwritable dead-letter topic must hold the partition, not drop data.
                self.stats.dlq_send_retries_total += 1
                log.warning("dead-letter topic %s unavailable (%s); retrying", self._topic, exc)
                await self._sleep(delay * (0.5 + random.random() / 2))
                delay = min(delay * 2, self._retry_max)
        counts = self.stats.dead_lettered_total
        for letter, _, _ in letters:
            counts[letter.reason.value] = counts.get(letter.reason.value, 0) + 1
