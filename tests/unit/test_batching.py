"""BatchPump releases acks in fetch order, whatever order deliveries finish in."""

from __future__ import annotations

import asyncio
from typing import Any

from agents.batching import BatchPump, FetchedBatch
from pipeline.delivery import InputMessage
from pipeline.model import KafkaCoordinates


class FakeConsumer:
    def __init__(self) -> None:
        self.acked: list[list[int]] = []
        self.pump_epoch = 0

    def ack_offsets(self, offsets: dict[Any, list[int]]) -> int:
        self.acked.append(offsets["tp"])
        return len(offsets["tp"])


def batch(sequence: int, first: int, n: int, epoch: int = 0) -> FetchedBatch:
    offsets = list(range(first, first + n))
    messages = [InputMessage(b"x", None, KafkaCoordinates("t", 0, o)) for o in offsets]
    return FetchedBatch(epoch, sequence, messages, {"tp": offsets})


async def test_acks_follow_fetch_order_when_deliveries_finish_out_of_order() -> None:
    consumer = FakeConsumer()
    gates = {0: asyncio.Event(), 10: asyncio.Event()}

    async def handle(messages: list[InputMessage]) -> None:
        await gates[messages[0].coords.offset].wait()

    pump = BatchPump(lambda: consumer, handle, batch_size=100, concurrency=2)  # type: ignore[arg-type]
    pump.start()
    await pump.queue.put(batch(1, 0, 10))
    await pump.queue.put(batch(2, 10, 10))
    await asyncio.sleep(0.01)
    gates[10].set()  # the later batch finishes first...
    await asyncio.sleep(0.01)
    assert consumer.acked == []  # ...but is not acked before the earlier one
    gates[0].set()
    await asyncio.sleep(0.01)
    assert consumer.acked == [list(range(0, 10)), list(range(10, 20))]
    await pump.stop()


async def test_batches_from_before_a_revocation_are_never_acked() -> None:
    consumer = FakeConsumer()
    handled: list[int] = []

    async def handle(messages: list[InputMessage]) -> None:
        handled.append(messages[0].coords.offset)

    pump = BatchPump(lambda: consumer, handle, batch_size=100, concurrency=1)  # type: ignore[arg-type]
    pump.new_epoch()  # a revocation happened after batch 1 was fetched
    assert consumer.pump_epoch == 1
    pump.start()
    await pump.queue.put(batch(1, 0, 10, epoch=0))
    await pump.queue.put(batch(2, 0, 10, epoch=1))  # re-read after the seek
    await asyncio.sleep(0.02)
    assert handled == [0]  # only the current epoch's batch was delivered
    assert consumer.acked == [list(range(0, 10))]
    await pump.stop()


async def test_dropped_batches_release_the_ones_behind_them_without_acking() -> None:
    consumer = FakeConsumer()

    async def handle(messages: list[InputMessage]) -> None:
        return None

    pump = BatchPump(lambda: consumer, handle, batch_size=100, concurrency=1)  # type: ignore[arg-type]
    await pump.queue.put(batch(1, 0, 10))
    assert pump.drop_queued() == 10
    pump.start()
    await pump.queue.put(batch(2, 10, 10))
    await asyncio.sleep(0.02)
    assert consumer.acked == [list(range(10, 20))]
    await pump.stop()
