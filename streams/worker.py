"""The Faust worker: thin agents that move batches through :class:`~riskstream.streams.driver.Driver`.

Transactions do not go through Faust's per-event stream (~35 µs of framework per event caps
a process near 10k events/s, FACTS.md). A :class:`TransactionReader` service reads the
``transactions`` and ``labels`` topics with aiokafka's batch API (``getmany``) and sends one
envelope per batch into an in-memory Faust channel; the ``score_transactions`` agent scores
the whole batch, publishes, flushes, and only then are the batch's offsets committed.
Transactions and labels share one consumer group with the range assignor, so partition *p*
of both topics (keyed by card) lands on the same worker, where that card's features and
decision-time snapshots live.

Market ticks, positions and loan applications are lower-volume: one Faust agent per stream
over ``take_events`` batches, declared from the stream registry, each handing its batch to the
same driver. Rule sets arrive on the one-partition ``rules`` topic, which every worker reads
whole (no group), and are swapped in without a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from riskstream.settings import Settings, load_settings

log = logging.getLogger("riskstream.worker")


@dataclass
class BatchEnvelope:
    """One fetched batch on its way through the scoring agent."""

    transactions: list[Any] = field(default_factory=list)  # aiokafka ConsumerRecords
    labels: list[Any] = field(default_factory=list)
    done: asyncio.Future | None = None


def build_app(settings: Settings, driver=None):
    """Create the Faust app with its agents, tables and services for these settings."""
    import faust
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.coordinator.assignors.range import RangePartitionAssignor
    from mode import Service

    from aiokafka import ConsumerRebalanceListener

    from riskstream.schemas.registry import STREAMS
    from riskstream.sinks.kafka import OutputPublisher, connect_redis
    from riskstream.streams.driver import Driver, batch_linger_s
    from riskstream.streams.outputs import publish
    from riskstream.streams.state import StateStore

    driver = driver or Driver(settings)
    redis_client = connect_redis(settings)
    publisher = OutputPublisher(settings, redis_client=redis_client)
    servers = settings.kafka_servers().split(",")
    data_dir = settings.data_dir.resolve() / "faust" / f"worker-{os.getpid()}"
    data_dir.mkdir(parents=True, exist_ok=True)
    credentials = None
    if settings.kafka_sasl_mechanism:
        credentials = faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.get_secret_value(),
            mechanism=settings.kafka_sasl_mechanism,
        )
    elif settings.kafka_security_protocol == "SSL":
        from aiokafka.helpers import create_ssl_context

        credentials = create_ssl_context(cafile=settings.kafka_ssl_cafile or None)
    app = faust.App(
        f"{settings.topic_prefix}riskstream",
        broker=[f"kafka://{s}" for s in servers],
        broker_credentials=credentials,
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        store="memory://",
        datadir=str(data_dir),
        web_enabled=False,
        broker_session_timeout=settings.session_timeout_ms / 1000,
        broker_heartbeat_interval=max(0.5, settings.session_timeout_ms / 6000),
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,  # a stuck agent must not hang shutdown (FACTS.md)
        producer_linger=0.002,
    )
    app.driver = driver
    app.publisher = publisher
    group = f"{settings.topic_prefix}{settings.consumer_group}"
    state_store = StateStore(driver, redis_client, group)
    if state_store.load_models():
        log.warning("restored model state from Redis: %s", driver.summary())
    readers: list = []  # the TransactionReader, once started
    watchdog = ShutdownWatchdog(settings.shutdown_timeout_s + 1.5)
    app.stats = {"transactions": 0, "batches": 0, "dead_letters": 0, "labels": 0, "rows": 0}
    batches = app.channel(maxsize=2)
    acks: set[asyncio.Future] = set()
    max_in_flight = 3  # batches scored but not yet acknowledged by the broker

    def topic(name: str):
        return app.topic(settings.topic(name), value_serializer="raw", key_serializer="raw",
                         partitions=settings.topic_partitions)

    async def delivered(produce, *args) -> int:
        """Run ``produce`` (synchronous: no other task interleaves its messages) and wait until
        the broker has acknowledged every message it handed to the publisher."""
        publisher.begin_batch()
        try:
            produce(*args)
        finally:
            delivery = publisher.end_batch()
        return await delivery.wait(timeout=60.0)

    # --------------------------------------------------------------------------------
    async def _ack_when_delivered(envelope: BatchEnvelope, delivery, n: int) -> None:
        try:
            await delivery.wait(timeout=60.0)
        except Exception as exc:
            envelope.done.set_exception(exc)
        else:
            envelope.done.set_result(n)

    @app.agent(batches)
    async def score_transactions(stream):
        # Pipelined: batch N's broker acknowledgement is awaited in the background while
        # batch N+1 is scored; the reader commits batches strictly in order as they complete.
        publisher.start_polling()
        async for envelope in stream:
            publisher.begin_batch()
            try:
                n = _score_envelope(envelope)
            except Exception as exc:
                publisher.end_batch()
                envelope.done.set_exception(exc)
                continue
            delivery = publisher.end_batch()
            acks.add(asyncio.ensure_future(_ack_when_delivered(envelope, delivery, n)))
            acks.difference_update([t for t in acks if t.done()])

    def _run(stream: str, records) -> int:
        out = driver.run(stream, [m.value for m in records], publisher,
                         [m.partition for m in records], [m.offset for m in records])
        app.stats["dead_letters"] += len(out.dead)
        return len(records) - len(out.dead)

    def _score_envelope(envelope: BatchEnvelope) -> int:
        if envelope.labels:  # first: a label never waits behind the batch it came with
            app.stats["labels"] += _run("labels", envelope.labels)
        if envelope.transactions:
            _run("transactions", envelope.transactions)
            app.stats["transactions"] += len(envelope.transactions)
        app.stats["batches"] += 1
        return len(envelope.transactions)

    class FollowPartitions(ConsumerRebalanceListener):
        """Feature state follows partitions: saved on revoke, loaded on assignment. Called
        between batches (the reader awaits each batch before fetching the next)."""

        def __init__(self, tx_topic: str):
            self.tx_topic = tx_topic

        async def on_partitions_revoked(self, revoked) -> None:
            for reader in readers:  # the new owner starts after what we scored and delivered
                await reader.settle(wait_all=True)
            parts = {tp.partition for tp in revoked if tp.topic == self.tx_topic}
            if parts:
                state_store.save_partitions(parts)
                state_store.drop_partitions(parts)
                driver.forget_partitions(parts)

        async def on_partitions_assigned(self, assigned) -> None:
            parts = {tp.partition for tp in assigned if tp.topic == self.tx_topic}
            driver.assign_partitions(parts)
            loaded = state_store.load_partitions(parts)
            log.warning("assigned transaction partitions %s (feature state restored for %d)", sorted(parts), loaded)

    # --------------------------------------------------------------------------------
    @app.service
    class TransactionReader(Service):
        """Batch reader for transactions + labels; commits after each batch is published."""

        async def on_start(self) -> None:
            readers.append(self)
            self.pending: collections.deque[tuple[BatchEnvelope, dict]] = collections.deque()
            self.uncommitted: dict[TopicPartition, int] = {}  # finished batches, not yet committed
            self.committed_at = 0.0
            self.consumer = AIOKafkaConsumer(
                **settings.aiokafka_config(),
                group_id=f"{settings.topic_prefix}{settings.consumer_group}",
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=settings.session_timeout_ms,
                heartbeat_interval_ms=max(300, settings.session_timeout_ms // 6),
                # ~3k records per partition per fetch: partitions advance together in event time
                # when a backlog is drained (replays, catching up), instead of one racing ahead.
                max_partition_fetch_bytes=1024 * 1024,
                fetch_max_wait_ms=settings.fetch_max_wait_ms,
                fetch_max_bytes=64 * 1024 * 1024,
                partition_assignment_strategy=(RangePartitionAssignor,),
            )
            self.tx_topic = settings.topic("transactions")
            self.consumer.subscribe([self.tx_topic, settings.topic("labels")],
                                    listener=FollowPartitions(self.tx_topic))
            await self.consumer.start()

        async def on_stop(self) -> None:
            watchdog.start()
            try:  # commit what is scored and delivered; the rest comes again after a restart
                await asyncio.wait_for(self.settle(wait_all=True), timeout=settings.shutdown_timeout_s / 3)
            except Exception as exc:
                log.warning("settling in-flight batches at stop: %s", exc)
            log.warning("stopping: %s", driver.summary())
            try:
                owned = {tp.partition for tp in self.consumer.assignment() if tp.topic == self.tx_topic}
                state_store.save_partitions(owned)
                state_store.save_models()
            except Exception as exc:  # state is an optimisation; outputs are already safe
                log.warning("saving state at shutdown: %s", exc)
            try:
                await asyncio.wait_for(self.consumer.stop(), timeout=settings.shutdown_timeout_s / 2)
            except (asyncio.TimeoutError, Exception) as exc:  # bounded stop, offsets already committed
                log.warning("consumer stop: %s", exc)
            try:
                publisher.flush(timeout=settings.shutdown_timeout_s / 2)
            except Exception as exc:
                log.warning("final flush: %s", exc)

        async def settle(self, wait_all: bool = False, commit_now: bool = False) -> None:
            """Commit finished batches in order. Waits for the oldest while too many are in
            flight (backpressure), or for all with ``wait_all`` (rebalance, shutdown).

            Offsets of finished batches are committed together at most every
            ``commit_interval_ms`` (each commit is a broker request; per small batch they
            cost the embedded broker more than the batch itself); ``wait_all`` and
            ``commit_now`` (the reader is idle) commit at once.
            A crash repeats at most that interval's transactions, whose outputs are
            idempotent in ClickHouse."""
            while self.pending:
                envelope, commit = self.pending[0]
                if not envelope.done.done() and not wait_all and len(self.pending) < max_in_flight:
                    break
                try:
                    await envelope.done
                except Exception as exc:
                    # Publishing failed (broker/Redis outage): commit nothing from here on;
                    # rewind to the last commit so the same records come again, after a pause.
                    log.error("batch not published (%s); will retry from the last commit", exc)
                    later = list(self.pending)
                    self.pending.clear()
                    for env, _ in later[1:]:  # their outcome no longer matters
                        env.done.add_done_callback(lambda f: f.exception())
                    for tp in {tp for _, c in later for tp in c} | set(self.uncommitted):
                        committed = await self.consumer.committed(tp)
                        if committed is None:
                            await self.consumer.seek_to_beginning(tp)
                        else:
                            self.consumer.seek(tp, committed)
                    self.uncommitted.clear()
                    await asyncio.sleep(1.0)
                    return
                self.pending.popleft()
                self.uncommitted.update(commit)
            now = time.monotonic()
            if self.uncommitted and (wait_all or commit_now
                                     or now - self.committed_at >= settings.commit_interval_ms / 1000):
                offsets, self.uncommitted = self.uncommitted, {}
                await self.consumer.commit(offsets)
                self.committed_at = now

        @Service.task
        async def _read(self) -> None:
            loop = asyncio.get_running_loop()
            most = settings.batch_max_events
            while not self.should_stop:
                await self.settle()
                data = await self.consumer.getmany(timeout_ms=50, max_records=most)
                if not data:  # idle: nothing to amortise a commit over
                    await self.settle(commit_now=True)
                    continue
                got = sum(map(len, data.values()))
                linger = batch_linger_s(got, settings)  # a trickle: give the batch a moment to fill
                if linger:
                    await asyncio.sleep(linger)
                    for tp, records in (await self.consumer.getmany(timeout_ms=0, max_records=most - got)).items():
                        data.setdefault(tp, []).extend(records)
                envelope = BatchEnvelope(done=loop.create_future())
                commit: dict[TopicPartition, int] = {}
                for tp, records in data.items():
                    if tp.topic == self.tx_topic:
                        envelope.transactions.extend(records)
                    else:
                        envelope.labels.extend(records)
                    commit[tp] = records[-1].offset + 1
                await batches.send(value=envelope)
                self.pending.append((envelope, commit))

    # --------------------------------------------------------------------------------
    @app.service
    class RuleWatcher(Service):
        """Every worker reads the whole rules topic (no consumer group) and hot-swaps rule sets."""

        async def on_start(self) -> None:
            self.consumer = AIOKafkaConsumer(**settings.aiokafka_config(), group_id=None,
                                             enable_auto_commit=False, auto_offset_reset="earliest")
            await self.consumer.start()
            self.consumer.assign([TopicPartition(settings.topic("rules"), 0)])

        async def on_stop(self) -> None:
            try:
                await asyncio.wait_for(self.consumer.stop(), timeout=2)
            except Exception:
                pass

        @Service.task
        async def _watch(self) -> None:
            while not self.should_stop:
                data = await self.consumer.getmany(timeout_ms=500)
                latest = None
                for records in data.values():
                    if records:
                        latest = records[-1]
                if latest is None:
                    continue
                try:
                    published = orjson.loads(latest.value)
                    source = published.get("source_name", "rules topic")
                    future = driver.rules.load_async(published["text"], source,
                                                     list_files=published.get("list_files") or None)
                    log.warning("rule set %s from %s: compiling", published.get("version"), source)
                    future.add_done_callback(lambda f, src=source: _report_compile(f, src))
                except Exception as exc:
                    log.error("ignoring unreadable rule set on the rules topic: %s", exc)

    @app.timer(interval=30.0)
    async def report_models() -> None:
        """Model upkeep (matured negatives, quality rows, drift alerts), between batches."""
        await delivered(lambda: publish(driver.upkeep(), publisher))
        log.warning("%s", driver.summary())

    @app.timer(interval=settings.state_checkpoint_interval_s)
    async def checkpoint_state() -> None:
        """State to Redis between batches. A snapshot blocks the loop (~0.4 s per 250k cards),
        so it runs minutes apart; revocation and shutdown save state too."""
        for reader in readers:
            owned = {tp.partition for tp in reader.consumer.assignment() if tp.topic == reader.tx_topic}
            state_store.save_partitions(owned)
        state_store.save_models()

    # --------------------------------------------------------------------------------
    # Row-shaped streams: one agent each, from the registry. Faust acknowledges (and later
    # commits) an agent's events when its loop moves on, so each agent waits for its own
    # outputs to be acknowledged first.
    def _row_agent(stream: str):
        def run_events(events) -> None:
            out = driver.run(stream, [e.value for e in events], publisher,
                             [e.message.partition for e in events], [e.message.offset for e in events])
            app.stats["rows"] += len(events) - len(out.dead)
            app.stats["dead_letters"] += len(out.dead)

        async def agent(stream_events):
            async for events in stream_events.take_events(1000, within=0.2):
                await delivered(run_events, events)

        agent.__name__ = f"process_{stream}"
        return app.agent(topic(stream), name=f"riskstream.process_{stream}")(agent)

    app.row_agents = [_row_agent(name) for name, spec in STREAMS.items()
                      if not spec.columnar and name != "labels"]  # labels ride with transactions
    return app


def _report_compile(future, source: str) -> None:
    """Say what a hot reload did: the old rule set stays in force when the new one fails."""
    exc = future.exception()
    if exc is not None:
        log.error("rule set from %s rejected, previous rules stay in force: %s", source, exc)
    else:
        compiled = future.result()
        log.warning("rule set %s in force (compiled in %.2fs)", compiled.version,
                    getattr(compiled, "compile_seconds", float("nan")))


class ShutdownWatchdog:
    """Bounds the stop: if Faust's shutdown hangs (FACTS.md), leave anyway. Offsets are only
    committed after a flush, so leaving early repeats work, it never loses it."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._started = threading.Event()

    def start(self) -> None:
        if self._started.is_set():
            return
        self._started.set()
        threading.Thread(target=self._bite, daemon=True, name="shutdown-watchdog").start()

    def _bite(self) -> None:
        time.sleep(self.seconds)
        sys.stderr.write(f"riskstream worker: shutdown took over {self.seconds:.1f}s; exiting\n")
        sys.stderr.flush()
        os._exit(0)


def run_worker(settings: Settings) -> int:
    import faust

    from riskstream.stack import ensure_topics
    from riskstream.streams.driver import tune_garbage_collector

    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ensure_topics(settings)  # idempotent; a real cluster may have auto-creation off
    app = build_app(settings)
    tune_garbage_collector()
    print(f"worker {os.getpid()}: kafka {settings.kafka_servers()}, rules {app.driver.rules.current.version}, "
          f"batches up to {settings.batch_max_events}", flush=True)
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    return run_worker(settings)


def register(sub) -> None:
    p = sub.add_parser("worker", help="Run a Faust worker against the configured (or embedded) stack.")
    p.set_defaults(run=_cmd_worker)
