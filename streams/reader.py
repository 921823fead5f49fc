"""The worker's batch source: every input stream read with aiokafka's batch API.

No stream goes through Faust's per-event stream (~35 µs of framework per event caps a process
near 10k events/s, and market ticks through a per-event agent ran at hundreds a second;
FACTS.md). :class:`BatchReader` fetches the topics of every registered stream with
``getmany``, hands one :class:`BatchEnvelope` per fetch to the scoring agent, and commits a
batch's offsets only once its outputs are acknowledged, strictly in order. The streams share
one consumer group with the range assignor, so partition *p* of transactions and labels (both
keyed by card) lands on the same worker, where that card's features and decision-time
snapshots live; feature state follows the partitions through :class:`FollowPartitions`, and
the market-risk state follows the one partition of the market topic (with the one of the
positions topic, on the same worker).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aiokafka import ConsumerRebalanceListener

from riskstream.schemas.registry import STREAMS
from riskstream.settings import Settings
from riskstream.streams.alignment import PartitionAligner, record_time_by_topic
from riskstream.streams.driver import Driver, batch_linger_s
from riskstream.streams.state import StateStore

log = logging.getLogger("riskstream.worker")

MAX_IN_FLIGHT = 3  # batches scored but not yet acknowledged by the broker


@dataclass
class BatchEnvelope:
    """One fetched batch on its way through the scoring agent: records by stream."""

    records: dict[str, list[Any]] = field(default_factory=dict)  # stream -> aiokafka ConsumerRecords
    done: asyncio.Future | None = None
    held_accounts: bool = False  # account events wait for Redis after this batch (streams.ledger)

    @property
    def transactions(self) -> list[Any]:
        return self.records.get("transactions", [])


class BatchReader:
    """Fetches batches of every stream and commits them in order once delivered."""

    def __init__(self, settings: Settings, driver: Driver, state_store: StateStore, publisher=None):
        self.settings = settings
        self.publisher = publisher  # a transactional one makes the commits transactions
        self.committer = None  # sinks.transactions: OffsetCommits or TransactionalCommits
        self.driver = driver
        self.state_store = state_store
        self.tx_topic = settings.topic("transactions")
        self.market_topic = settings.topic("market")
        self.loans_topic = settings.topic("loan_applications")
        self.stream_of = {settings.topic(name): name for name in STREAMS}
        self.pending: collections.deque[tuple[BatchEnvelope, dict]] = collections.deque()
        self.uncommitted: dict = {}  # TopicPartition -> next offset, of finished batches
        # Account-event partitions read while events wait for Redis (streams.ledger): not
        # committed until those are applied, so a worker that dies leaves them to be read again.
        self.held_accounts: dict = {}
        self.committed_at = 0.0
        self.consumer = None
        # Transactions, labels and loan applications go on together in event time (the
        # registry's ``aligned`` streams, each by its own time column).
        self.aligned_topics = {settings.topic(name) for name, spec in STREAMS.items() if spec.aligned}
        self.aligner = PartitionAligner(
            settings.partition_lead_ms, batch=settings.batch_max_events,
            event_time=record_time_by_topic({settings.topic(name): spec.time_column for name, spec in STREAMS.items()}))
        self.delivered_at: dict = {}  # aligned TopicPartition -> when it last brought records
        self.assigned_at: dict = {}  # aligned TopicPartition -> when it was assigned

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.coordinator.assignors.range import RangePartitionAssignor

        from riskstream.sinks.transactions import committer, transactional

        s = self.settings
        self.consumer = AIOKafkaConsumer(
            **s.aiokafka_config(),
            group_id=f"{s.topic_prefix}{s.consumer_group}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=max(300, s.session_timeout_ms // 6),
            # ~3k records per partition per fetch: partitions advance together in event time
            # when a backlog is drained (replays, catching up), instead of one racing ahead.
            max_partition_fetch_bytes=1024 * 1024,
            fetch_max_wait_ms=s.fetch_max_wait_ms,
            fetch_max_bytes=64 * 1024 * 1024,
            partition_assignment_strategy=(RangePartitionAssignor,),
            # Exactly once end to end: an upstream transaction's records only once committed.
            isolation_level="read_committed" if transactional(self.publisher) else "read_uncommitted",
        )
        self.committer = committer(s, self.publisher, self.consumer)
        self.consumer.subscribe(sorted(self.stream_of), listener=FollowPartitions(self))
        await self.consumer.start()

    def owned_partitions(self) -> set[int]:
        """Transaction partitions this worker owns now."""
        if self.consumer is None:
            return set()
        return {tp.partition for tp in self.consumer.assignment() if tp.topic == self.tx_topic}

    def owns_market(self) -> bool:
        """This worker holds the market partition, and with it the market-risk state."""
        return self.consumer is not None and any(tp.topic == self.market_topic for tp in self.consumer.assignment())

    def save_state(self) -> None:
        self.state_store.save_partitions(self.owned_partitions())
        if self.owns_market():
            self.state_store.save_market()
        self.state_store.save_models()

    async def stop(self) -> None:
        """Commit what is scored and delivered, save state, leave the group; bounded."""
        timeout = self.settings.shutdown_timeout_s
        t0 = time.monotonic()
        try:  # the rest comes again after a restart
            await asyncio.wait_for(self.settle(wait_all=True), timeout=timeout / 3)
        except Exception as exc:
            log.warning("settling in-flight batches at stop: %r", exc)
        log.warning("stopping: %s", self.driver.summary())
        t1 = time.monotonic()
        try:
            self.save_state()
        except Exception as exc:  # state is an optimisation; outputs are already safe
            log.warning("saving state at shutdown: %s", exc)
        t2 = time.monotonic()
        try:
            await asyncio.wait_for(self.consumer.stop(), timeout=timeout / 2)
        except (asyncio.TimeoutError, Exception) as exc:  # bounded stop, offsets already committed
            log.warning("consumer stop: %r", exc)
        # What a stop costs, so that a slow one says where the time went.
        log.warning("reader stopped in %.1fs: in-flight batches %.1fs, state saved %.1fs, group left %.1fs",
                    time.monotonic() - t0, t1 - t0, t2 - t1, time.monotonic() - t2)

    async def settle(self, wait_all: bool = False, commit_now: bool = False) -> None:
        """Commit finished batches in order. Waits for the oldest while too many are in
        flight (backpressure), or for all with ``wait_all`` (rebalance, shutdown).

        Offsets of finished batches are committed together at most every
        ``commit_interval_ms`` (each commit is a broker request; per small batch they cost
        the embedded broker more than the batch itself); ``wait_all`` and ``commit_now`` (the
        reader is idle) commit at once. At least once, a crash repeats at most that interval's
        transactions, whose outputs are idempotent in ClickHouse; exactly once, the commit is
        the transaction holding those batches' outputs."""
        if wait_all:
            awaited = [envelope.done for envelope, _ in self.pending]
        else:
            awaited = [self.pending[0][0].done] if len(self.pending) >= MAX_IN_FLIGHT else []
        if awaited:  # outside the lock: exactly once, a batch is done once the agent scored it
            await asyncio.wait(awaited)
        async with self.committer.lock:  # nothing is produced while a transaction is settled
            while self.pending and self.pending[0][0].done.done():
                envelope, commit = self.pending[0]
                if envelope.done.cancelled() or envelope.done.exception() is not None:
                    # Publishing failed (broker/Redis outage): commit nothing from here on;
                    # rewind to the last commit so the same records come again, after a pause.
                    reason = "cancelled" if envelope.done.cancelled() else envelope.done.exception()
                    log.error("batch not published (%s); will retry from the last commit", reason)
                    await self._rewind()
                    await asyncio.sleep(1.0)
                    return
                self.pending.popleft()
                self._hold_accounts(envelope, commit)
                self.uncommitted.update(commit)
            now = time.monotonic()
            if (self.uncommitted or self.committer.dirty) and (
                    wait_all or commit_now or now - self.committed_at >= self.settings.commit_interval_ms / 1000):
                offsets, self.uncommitted = self.uncommitted, {}
                try:
                    await self.committer.commit(offsets)
                except Exception as exc:
                    if not self.committer.transactional:
                        raise
                    log.error("transaction not committed (%s); aborted, will retry from the last commit", exc)
                    self.uncommitted = offsets
                    await self._rewind()
                    await asyncio.sleep(1.0)
                    return
                self.committed_at = now

    def _hold_accounts(self, envelope: BatchEnvelope, commit: dict) -> None:
        if envelope.held_accounts:
            for tp in [tp for tp in commit if self.stream_of[tp.topic] == "account_events"]:
                self.held_accounts[tp] = commit.pop(tp)
        elif self.held_accounts:  # applied: commit what was read meanwhile
            self.uncommitted.update(self.held_accounts)
            self.held_accounts = {}

    async def _rewind(self) -> None:
        """Back to the last commit: the open transaction (if any) aborted, batches not yet
        committed dropped (the agent skips those it has not scored), consumer positions
        moved back. Run with the committer's lock held."""
        await self.committer.abort()
        later = list(self.pending)
        self.pending.clear()
        for env, _ in later:
            if not env.done.done():
                env.done.cancel()
            elif not env.done.cancelled():
                env.done.exception()  # its outcome no longer matters: retrieved, not reported at exit
        for tp in {tp for _, c in later for tp in c} | set(self.uncommitted):
            committed = await self.consumer.committed(tp)
            if committed is None:
                await self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, committed)
        self.uncommitted.clear()
        self.aligner.drop()
        # Where each partition stands is forgotten with what was held: until the broker has
        # answered for a partition again, it holds the others back, as just after assignment.
        self.assigned_at = dict.fromkeys(self.assigned_at, time.monotonic())

    async def next_batch(self) -> BatchEnvelope | None:
        """The next fetched batch (None when idle), registered for an in-order commit."""
        most = self.settings.batch_max_events
        await self.settle()
        # Partitions with records held back for alignment are left out of the fetch, which keeps
        # what the consumer has prefetched of them (pausing them would drop it, and the broker
        # would be asked for it again). Held records wait for the others to move, so the fetch
        # waits for the broker as usual: labels are held for most of a drain (they run ahead in
        # event time), and returning at once made a loop of small batches (in one bench run, 2
        # workers drained 41.9k tx/s instead of 51.4k).
        holding = self.aligner.holding()
        fetch = [tp for tp in self.consumer.assignment() if tp not in holding] if holding else []
        data = await self.consumer.getmany(*fetch, timeout_ms=50, max_records=most) if fetch or not holding else {}
        if not data and not holding:  # idle: nothing to amortise a commit over
            await self.settle(commit_now=True)
            return None
        got = sum(map(len, data.values()))
        if got >= most and self.aligner.lead_ms > 0:
            # A full fetch can hold a few partitions only; alignment would then cut them at where
            # the others last stood, an hour of traffic (on Kafka, every other batch was that
            # small). The others' records, prefetched already, come too, and alignment cuts all.
            others = [tp for tp in (fetch or self.consumer.assignment()) if tp.topic in self.aligned_topics and tp not in data]
            if others:
                for tp, records in (await self.consumer.getmany(*others, timeout_ms=0, max_records=most)).items():
                    data.setdefault(tp, []).extend(records)
        linger = batch_linger_s(got, self.settings)  # a trickle: give the batch a moment to fill
        if linger and (fetch or not holding):
            await asyncio.sleep(linger)
            for tp, records in (await self.consumer.getmany(*fetch, timeout_ms=0, max_records=most - got)).items():
                data.setdefault(tp, []).extend(records)
        data = await self._aligned(data)
        if not data:
            return None
        envelope = BatchEnvelope(done=asyncio.get_running_loop().create_future())
        commit: dict = {}
        for tp, records in data.items():
            envelope.records.setdefault(self.stream_of[tp.topic], []).extend(records)
            commit[tp] = records[-1].offset + 1
        self.pending.append((envelope, commit))
        return envelope


    # A partition counts as having more to read while the broker's high watermark says so, or
    # while it brought records this recently (Tansu's high watermark lags behind its log), or,
    # for this long after its assignment, until the broker has told where it ends: a partition
    # not fetched yet stands nowhere, and the others would race ahead (the demo's worker once
    # decided a partition 40 days ahead in its first second).
    RECENTLY_DELIVERED_S = 1.0
    UNKNOWN_END_S = 5.0

    async def _aligned(self, data: dict) -> dict:
        """Aligned partitions cut to the lead over the slowest (``streams.alignment``); a
        partition with records held back is not fetched until they are all handed on."""
        if self.aligner.lead_ms <= 0:
            return data
        now = time.monotonic()
        aligned = {tp: records for tp, records in data.items() if tp.topic in self.aligned_topics}
        for tp in aligned:
            self.delivered_at[tp] = now
        has_more = {}
        for tp in self.consumer.assignment():
            if tp.topic in self.aligned_topics:
                high = self.consumer.highwater(tp)
                # Recent delivery counts for transactions only: labels and loan applications are
                # sparse, a fetch brings all there is, and a label's time held every transaction
                # partition within an hour past it for a second after each delivery.
                has_more[tp] = (tp.topic == self.tx_topic and now - self.delivered_at.get(tp, 0.0) <= self.RECENTLY_DELIVERED_S
                                or (high is None and now - self.assigned_at.get(tp, 0.0) <= self.UNKNOWN_END_S)
                                or (high is not None and high > await self.consumer.position(tp)))
                if tp not in self.aligner.last_time and now - self.assigned_at.get(tp, 0.0) > self.UNKNOWN_END_S:
                    has_more[tp] = False  # never waited on for good (a partition the broker does not serve)
        out = {tp: records for tp, records in data.items() if tp.topic not in self.aligned_topics}
        out.update(self.aligner.take(aligned, has_more))
        if not out and self.aligner.holding():
            await asyncio.sleep(0.005)  # waiting for a partition the broker has not answered for yet
        return out


class FollowPartitions(ConsumerRebalanceListener):
    """Feature state follows partitions: saved on revoke, loaded on assignment. Called
    between batches (the reader awaits each batch before fetching the next)."""

    def __init__(self, reader: BatchReader):
        self.reader = reader

    async def on_partitions_revoked(self, revoked) -> None:
        reader = self.reader
        # The new owner starts after what we scored and delivered. Bounded: a batch that cannot
        # finish in time is dropped uncommitted (the new owner reads it again), rather than
        # hold up the whole group.
        timeout = reader.settings.session_timeout_ms / 1000
        try:
            await asyncio.wait_for(reader.settle(wait_all=True), timeout)
        except asyncio.TimeoutError:
            log.error("batches in flight not done %.0fs into a rebalance; left uncommitted for the new owner", timeout)
            async with reader.committer.lock:
                await reader._rewind()
        for tp in revoked:  # its events are read again by the new owner (applied once per event id)
            reader.held_accounts.pop(tp, None)
        reader.aligner.drop(revoked)
        parts = {tp.partition for tp in revoked if tp.topic == reader.tx_topic}
        if parts:
            # Bounded: the new owner is waiting; past it, the new owner starts from an older save.
            await with_redis(lambda: reader.state_store.save_partitions(parts), "saving feature state",
                             give_up_after_s=reader.settings.session_timeout_ms / 1000)
            reader.state_store.drop_partitions(parts)
            reader.driver.forget_partitions(parts)
        loans = {tp.partition for tp in revoked if tp.topic == reader.loans_topic}
        reader.driver.forget_partitions(loans, "loan_applications")
        if any(tp.topic == reader.market_topic for tp in revoked):
            size = await with_redis(reader.state_store.save_market, "saving market state",
                                    give_up_after_s=reader.settings.session_timeout_ms / 1000) or 0
            reader.driver.market.reset()
            log.warning("market partition revoked: market-risk state handed over (%d bytes)", size)

    async def on_partitions_assigned(self, assigned) -> None:
        reader = self.reader
        parts = {tp.partition for tp in assigned if tp.topic == reader.tx_topic}
        reader.assigned_at.update(dict.fromkeys((tp for tp in assigned if tp.topic in reader.aligned_topics),
                                                time.monotonic()))
        reader.driver.assign_partitions(parts)
        # Loan outcomes wait for every assigned partition of applications, not the fastest.
        reader.driver.assign_partitions({tp.partition for tp in assigned if tp.topic == reader.loans_topic},
                                        "loan_applications")
        # Not without it: deciding from empty state, and saving that over the real one later,
        # would lose the partition's features.
        loaded = await with_redis(lambda: reader.state_store.load_partitions(parts), "loading feature state")
        log.warning("assigned transaction partitions %s (feature state restored for %d)", sorted(parts), loaded)
        if any(tp.topic == reader.market_topic for tp in assigned):
            restored = await with_redis(reader.state_store.load_market, "loading market state")
            market = reader.driver.market
            log.warning("market partition assigned: market-risk state %s (%d portfolios, %d instruments)",
                        "restored" if restored else "new", len(market.positions), len(market.book.slots))
            for name in ("market", "positions"):
                count = len(reader.consumer.partitions_for_topic(reader.settings.topic(name)) or ())
                if count > 1:
                    log.error("topic %s has %d partitions: market risk needs one (each worker would hold only "
                              "part of the portfolios and instruments); recreate it with one partition",
                              reader.settings.topic(name), count)


async def with_redis(action, what: str, give_up_after_s: float | None = None):
    """``action()`` (a state save or load in Redis), tried again every second while Redis is
    unreachable; None if it still fails after ``give_up_after_s``."""
    import redis

    started = time.monotonic()
    while True:
        try:
            return action()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            waited = time.monotonic() - started
            if give_up_after_s is not None and waited >= give_up_after_s:
                log.error("%s: Redis unreachable for %.0fs (%s); going on without it", what, waited, exc)
                return None
            log.error("%s: Redis unreachable (%s); trying again", what, exc)
            await asyncio.sleep(1.0)
