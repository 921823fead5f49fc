"""The worker's batch reader on the real embedded broker: commits in order, and a batch whose
outputs were not delivered is read again, with what came after it dropped."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from riskstream.sinks.kafka import DeliveryError
from riskstream.streams.driver import Driver
from riskstream.streams.reader import BatchReader
from riskstream.streams.state import StateStore
from tests.conftest import produce

pytestmark = pytest.mark.integration


async def _next(reader: BatchReader, timeout: float = 30.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        envelope = await reader.next_batch()
        if envelope is not None:
            return envelope
    raise AssertionError("no batch within the timeout")


def _offsets(envelope) -> list[int]:
    return sorted(r.offset for r in envelope.transactions)


@pytest.mark.both_brokers
def test_a_batch_not_delivered_is_read_again_and_later_batches_are_dropped(stack):
    settings = stack.model_copy(update={"batch_linger_ms": 0, "commit_interval_ms": 0})
    driver = Driver(settings, with_models=False)
    store = StateStore(driver, redis.Redis.from_url(settings.redis_url.get_secret_value()), "reader-test")
    # One partition's worth of keys, so that offsets tell the order.
    records = [(b"card-1", b'{"n": %d}' % i) for i in range(30)]

    async def run() -> None:
        reader = BatchReader(settings, driver, store)
        await reader.start()
        try:
            produce(settings, "transactions", records[:10])
            first = await _next(reader)
            first.done.set_result(len(first.transactions))
            await reader.settle(commit_now=True)
            committed = {tp: await reader.consumer.committed(tp) for tp in reader.consumer.assignment()
                         if tp.topic == settings.topic("transactions")}
            assert sum(o or 0 for o in committed.values()) == 10
            produce(settings, "transactions", records[10:20])
            second = await _next(reader)
            produce(settings, "transactions", records[20:30])
            third = await _next(reader)
            failed_at = time.monotonic()
            second.done.set_exception(DeliveryError("the broker did not acknowledge"))
            await reader.settle()
            # Read again from the commit, every partition holds the others back until the broker
            # has answered for it again (event-time alignment), as just after its assignment.
            assert not reader.aligner.last_time and min(reader.assigned_at.values()) >= failed_at
            assert third.done.cancelled(), "a batch after the failed one is dropped, not committed"
            for tp, offset in committed.items():  # nothing past the first batch was committed
                assert await reader.consumer.committed(tp) == offset
            again = await _next(reader)
            assert _offsets(again)[0] == _offsets(second)[0], "the failed batch comes again"
        finally:
            await reader.consumer.stop()

    asyncio.run(run())
