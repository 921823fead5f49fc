"""How the worker commits what it consumed: plain offset commits (at least once), or the
batch's outputs and its input offsets in one Kafka transaction (exactly once).

The reader (``streams.reader``) gathers the offsets of finished batches and hands them to
one of the two committers below; the scoring agent produces under the committer's ``lock``,
so that nothing is produced into a transaction while it is being committed or aborted.

Exactly once rests on the broker fencing two kinds of zombie: a worker restarted under the
same transactional id (its predecessor's open transaction is aborted at
``init_transactions``), and a worker that lost its partitions in a rebalance (its offset
commit carries its consumer generation, which the broker refuses once the group moved on;
KIP-447). :func:`check_broker` asks the broker for the second before exactly once is
switched on, since a broker that accepts stale generations would let a zombie's
transaction commit beside its successor's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import uuid

from riskstream.settings import Settings

log = logging.getLogger("riskstream.worker")


def transactional_id(settings: Settings) -> str:
    name = settings.worker_name or f"{socket.gethostname()}-{os.getpid()}"
    return f"{settings.topic_prefix}{settings.consumer_group}-{name}"


def producer_config(settings: Settings, transactional: str | None) -> dict:
    """What a transactional output producer adds to the at-least-once one."""
    if transactional is None:
        return {}
    return {"transactional.id": transactional, "enable.idempotence": True,
            "transaction.timeout.ms": settings.transaction_timeout_ms}


def group_metadata(group_id: str, generation: int, member_id: str) -> bytes:
    """The consumer-group metadata librdkafka's ``send_offsets_to_transaction`` takes, for a
    group joined by aiokafka: librdkafka's own serialised form (what its
    ``Consumer.consumer_group_metadata()`` returns: magic, generation in host byte order,
    group id and member id NUL-terminated, then 1 for "no static instance id"). With the real
    generation and member id the broker fences a worker whose group has moved on."""
    return (b"CGMDv2:" + struct.pack("=i", generation) + group_id.encode() + b"\0"
            + member_id.encode() + b"\0" + b"\x01")


def check_broker(settings: Settings, timeout: float = 30.0) -> str | None:
    """Why exactly once can't be had on this broker, or None when it can: transactions must
    start, and an offset commit from a consumer generation the group never had must be
    refused."""
    from confluent_kafka import KafkaException, Producer, TopicPartition

    probe = Producer({**settings.kafka_client_config(),
                      **producer_config(settings, f"{transactional_id(settings)}-probe")})
    try:
        probe.init_transactions(timeout)
        probe.begin_transaction()
        group = f"{settings.topic_prefix}riskstream-fencing-probe-{uuid.uuid4().hex[:8]}"
        stale = group_metadata(group, 7, "riskstream-probe")
        try:
            probe.send_offsets_to_transaction([TopicPartition(settings.topic("transactions"), 0, 0)],
                                              stale, timeout)
        except KafkaException:
            return None  # refused, as it must be
        finally:
            with contextlib.suppress(KafkaException):
                probe.abort_transaction(timeout)
        return "the broker accepted an offset commit from a stale consumer generation, so it cannot fence " \
               "a worker that lost its partitions"
    except KafkaException as exc:
        return f"the broker did not start a transaction ({exc.args[0].str() if exc.args else exc})"
    finally:
        probe.flush(1)


class OffsetCommits:
    """At least once: offsets committed after the batch's outputs are acknowledged. A crash
    repeats outputs since the last commit (idempotent downstream), never loses one."""

    transactional = False
    lock = contextlib.nullcontext()  # ``async with`` works on it, and never waits
    dirty = False

    def __init__(self, consumer):
        self.consumer = consumer

    async def commit(self, offsets: dict) -> None:
        if offsets:
            await self.consumer.commit(offsets)

    async def abort(self) -> None:
        """Nothing to take back: what was produced stays, and comes again after the rewind."""


class TransactionalCommits:
    """Exactly once: everything produced since the last commit, and the offsets of the
    batches that produced it, committed in one transaction. Read-committed consumers of the
    outputs (the sink, the desk's tools) see each decision once; an aborted transaction's
    outputs are never seen, and its input is read again from the committed offsets."""

    transactional = True

    def __init__(self, publisher, consumer, group_id: str):
        self.publisher = publisher
        self.producer = publisher.producer
        self.consumer = consumer
        self.group_id = group_id
        self.lock = asyncio.Lock()

    def begin(self) -> None:
        self.producer.begin_transaction()
        self.publisher.produced_in_transaction = 0

    @property
    def dirty(self) -> bool:
        return self.publisher.produced_in_transaction > 0

    def _metadata(self) -> bytes:
        coordinator = self.consumer._coordinator  # aiokafka keeps the joined generation there
        return group_metadata(self.group_id, coordinator.generation, coordinator.member_id)

    async def commit(self, offsets: dict) -> None:
        """Commit the open transaction (its outputs and ``offsets``) and begin the next. Run
        under ``lock``. A failure leaves the transaction to :meth:`abort`."""
        from confluent_kafka import TopicPartition

        loop = asyncio.get_running_loop()
        if offsets:
            positions = [TopicPartition(tp.topic, tp.partition, offset) for tp, offset in offsets.items()]
            await loop.run_in_executor(None, self.producer.send_offsets_to_transaction,
                                       positions, self._metadata(), 30.0)
        await loop.run_in_executor(None, self.producer.commit_transaction, 60.0)
        self.begin()

    async def abort(self) -> None:
        """Take back the open transaction; a producer fenced by a successor can't go on."""
        from confluent_kafka import KafkaException

        try:
            await asyncio.get_running_loop().run_in_executor(None, self.producer.abort_transaction, 30.0)
        except KafkaException as exc:
            error = exc.args[0]
            if error.fatal():
                raise FencedWorker(f"this worker's transactions were fenced ({error.str()}): another worker "
                                   "took its transactional id or its partitions; it stops") from exc
            log.warning("aborting the transaction: %s", error.str())
        self.begin()


class FencedWorker(RuntimeError):
    """A successor holds this worker's transactional id: whatever it did since is void."""


def committer(settings: Settings, publisher, consumer):
    """The committer for this publisher: transactions when it was made transactional (exactly
    once, checked at start), plain offset commits otherwise."""
    if transactional(publisher):
        committer = TransactionalCommits(publisher, consumer, f"{settings.topic_prefix}{settings.consumer_group}")
        committer.begin()
        return committer
    return OffsetCommits(consumer)


def transactional(publisher) -> bool:
    """Whether outputs go through this publisher in transactions (exactly once)."""
    return publisher is not None and bool(publisher.transactional_id)
