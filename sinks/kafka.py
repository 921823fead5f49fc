"""Publishing results: decision/alert/limit topics, the ClickHouse sink topic, Redis limits.

One confluent-kafka producer (librdkafka batches and compresses in C: 170k-440k messages/s
here, several times aiokafka's per-message Python path) serves every output. ``flush()``
returns once every message handed over so far is acknowledged by the broker; the worker
commits input offsets only after it, so a crash can repeat outputs but never lose them.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterable

from riskstream.schemas.events import DeadLetter
from riskstream.settings import Settings
from riskstream.sinks.clickhouse import encode_blocks

log = logging.getLogger("riskstream.publisher")


class DeliveryError(RuntimeError):
    """The broker did not acknowledge some output; the batch must not be committed."""


class BatchDelivery:
    """Acknowledgements of one batch's messages.

    ``flush()`` waits for the producer's whole queue, which under a continuous stream never
    empties while the next batches are produced; counting each batch's own acks lets batch
    N be committed as soon as its messages are in, whatever came after.
    """

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self.produced = 0
        self.acked = 0
        self.errors: list[str] = []
        self.closed = False
        self._waiters: list = []

    def on_delivery(self, err, msg) -> None:  # librdkafka's thread or whoever polls
        with self._lock:
            self.acked += 1
            if err is not None:
                self.errors.append(f"{msg.topic()}: {err}")
            finished = self.closed and self.acked >= self.produced
        if finished:
            self._notify()

    def close(self) -> None:
        """No more messages for this batch."""
        with self._lock:
            self.closed = True
            finished = self.acked >= self.produced
        if finished:
            self._notify()

    def _notify(self) -> None:
        for loop, fut in self._waiters:
            loop.call_soon_threadsafe(self._resolve, fut)

    def _resolve(self, fut) -> None:
        if fut.done():
            return
        if self.errors:
            fut.set_exception(DeliveryError(f"{len(self.errors)} messages failed: {self.errors[:3]}"))
        else:
            fut.set_result(self.produced)

    async def wait(self, timeout: float = 60.0) -> int:
        import asyncio

        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._lock:
            self._waiters.append((loop, fut))
            finished = self.closed and self.acked >= self.produced
        if finished:
            self._resolve(fut)
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise DeliveryError(f"{self.produced - self.acked} of {self.produced} messages not acknowledged "
                                f"within {timeout:.0f}s") from None


class OutputPublisher:
    """The worker's publisher: topics through one producer, limit controls into Redis."""

    publishes_topics = True  # decisions, alerts and limits go to their topics
    takes_arrow_tables = False  # ClickHouse rows travel as Arrow IPC blocks on the sink topic

    def __init__(self, settings: Settings, redis_client=None, producer=None, transactional_id: str | None = None,
                 redis_guard=None):
        from confluent_kafka import Producer

        from riskstream.sinks.transactions import producer_config

        self.settings = settings
        self.transactional_id = transactional_id  # exactly once: outputs go in transactions
        self.produced_in_transaction = 0
        self.producer = producer or Producer({
            **settings.kafka_client_config(),
            "linger.ms": settings.produce_linger_ms,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "compression.type": "lz4",
            "acks": "all",
            "enable.idempotence": False,
            **producer_config(settings, transactional_id),
        })
        if transactional_id:
            self.producer.init_transactions(30.0)  # fences (aborts) a predecessor's open transaction
        self.redis = redis_client
        # streams.redis_outage: limit controls wait here, in order, while Redis is unreachable
        self.redis_guard = redis_guard
        self.waiting_limits: list[dict[str, Any]] = []
        self.topics = {name: settings.topic(name) for name in
                       ("decisions", "alerts", "limits", "dead_letters", "sink")}
        self._failed: list[str] = []
        self.counts: dict[str, int] = {}
        self.delivery: BatchDelivery | None = None  # the batch being produced, if tracked
        self._poller = None

    def _on_delivery(self, err, msg) -> None:
        if err is not None:
            self._failed.append(f"{msg.topic()}: {err}")

    def begin_batch(self) -> BatchDelivery:
        """Track the acknowledgements of everything produced until ``end_batch``."""
        self.delivery = BatchDelivery()
        return self.delivery

    def end_batch(self) -> BatchDelivery:
        if self.waiting_limits and self.redis_guard.up:  # Redis is back: the held controls first
            self.limits([])
        delivery, self.delivery = self.delivery, None
        delivery.close()
        self.producer.poll(0)
        return delivery

    def start_polling(self) -> None:
        """Serve delivery callbacks from a thread, so batches resolve while the loop works."""
        import threading

        if self._poller is not None:
            return
        self._polling = True

        def poll() -> None:
            while self._polling:
                self.producer.poll(0.02)

        self._poller = threading.Thread(target=poll, daemon=True, name="delivery-poller")
        self._poller.start()

    def stop_polling(self) -> None:
        if self._poller is not None:
            self._polling = False
            self._poller.join(2)
            self._poller = None

    def _produce_all(self, topic: str, messages: Iterable[tuple[bytes | None, bytes]]) -> int:
        """Hand messages to the producer, counted for the batch being tracked; returns how many.

        One decision message per transaction goes through here, so the loop stays tight (no
        call per message besides produce itself). A full local queue is backpressure, not loss:
        librdkafka is given time to drain it and the message is produced again."""
        delivery = self.delivery
        callback = delivery.on_delivery if delivery is not None else self._on_delivery
        produce = self.producer.produce
        n = 0
        for key, value in messages:
            while True:
                try:
                    produce(topic, value, key, on_delivery=callback)
                    break
                except BufferError:
                    self.producer.poll(0.05)
            n += 1
        if delivery is not None:  # before end_batch closes it, so no acknowledgement is missed
            delivery.produced += n
        self.produced_in_transaction += n
        return n

    def send(self, stream: str, messages: Iterable[tuple[bytes | None, bytes]]) -> None:
        n = self._produce_all(self.topics[stream], messages)
        self.counts[stream] = self.counts.get(stream, 0) + n
        self.producer.poll(0)

    def sink(self, table: str, rows: list[bytes]) -> None:
        """Rows for a ClickHouse table, as blocks on the sink topic (key = table)."""
        if not rows:
            return
        key = table.encode()
        self._produce_all(self.topics["sink"], ((key, block) for block in encode_blocks(rows)))
        self.counts[f"rows:{table}"] = self.counts.get(f"rows:{table}", 0) + len(rows)
        self.producer.poll(0)

    def sink_arrow(self, table: str, blocks: list[bytes], rows: int = 0) -> None:
        """Arrow IPC streams for a ClickHouse table (key = table@ArrowStream)."""
        if not blocks:
            return
        key = f"{table}@ArrowStream".encode()
        self._produce_all(self.topics["sink"], ((key, block) for block in blocks))
        self.counts[f"rows:{table}"] = self.counts.get(f"rows:{table}", 0) + rows
        self.producer.poll(0)

    def dead_letters(self, dead: list[DeadLetter]) -> None:
        if not dead:
            return
        rows = [d.encoded() for d in dead]
        self.send("dead_letters", ((d.topic.encode(), r) for d, r in zip(dead, rows)))
        self.sink("dead_letters", rows)

    def limits(self, limits: list[dict[str, Any]]) -> None:
        """Limit controls into Redis: one hash per entity, expiring with the control. While
        Redis is unreachable they wait, and are written in order once it answers: the batch is
        not held back (the ``limits`` topic has them already)."""
        if self.redis is None or not (limits or self.waiting_limits):
            return
        if self.redis_guard is None:
            self._write_limits(limits)
            return
        from riskstream.streams.redis_outage import RedisUnavailable

        waiting = self.waiting_limits + list(limits)
        try:
            self.redis_guard.call(self._write_limits, waiting)
        except RedisUnavailable:
            self.waiting_limits = waiting
            return
        if self.waiting_limits:
            log.warning("wrote %d limit controls held while Redis was down", len(self.waiting_limits))
        self.waiting_limits = []

    def _write_limits(self, limits: list[dict[str, Any]]) -> None:
        if not limits:
            return
        prefix = self.settings.limit_key_prefix
        pipe = self.redis.pipeline(transaction=False)
        now = time.time()
        for lim in limits:
            key = f"{prefix}{lim['entity_type']}:{lim['entity_id']}"
            if lim["action"] == "clear":  # the exposure is back under its limit
                pipe.delete(key)
                continue
            pipe.hset(key, mapping={
                "action": lim["action"],
                "max_amount": lim["max_amount"],
                "valid_until": lim["valid_until"],
                "reason": lim["reason"],
                "event_id": lim["event_id"],
                "rules_version": lim["rules_version"],
                "issued_at": lim["issued_at"],
            })
            pipe.expireat(key, int(max(lim["valid_until"], now + 60)))
        pipe.execute()
        self.counts["redis_limits"] = self.counts.get("redis_limits", 0) + len(limits)

    def flush(self, timeout: float = 30.0) -> None:
        remaining = self.producer.flush(timeout)
        if remaining:
            raise DeliveryError(f"{remaining} messages not acknowledged within {timeout:.0f}s")
        if self._failed:
            failed, self._failed = self._failed, []
            raise DeliveryError(f"{len(failed)} messages failed: {failed[:3]}")


def connect_redis(settings: Settings, timeout_s: float = 5.0):
    import redis

    return redis.Redis.from_url(settings.redis_target(), socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
