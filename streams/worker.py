"""The Faust worker: thin agents that move batches through :class:`~riskstream.streams.driver.Driver`.

* Every stream comes in batches from :class:`~riskstream.streams.reader.BatchReader`
  (aiokafka's ``getmany``) through an in-memory Faust channel to the ``score_transactions``
  agent, which runs the driver, publishes, and lets the reader commit once the broker has
  acknowledged the batch's outputs.
* The row-shaped streams (market ticks, positions, loan applications) come in the same
  batches, read by the same reader, and go through the same driver.
* Rule sets arrive on the one-partition ``rules`` topic, which every worker reads whole (no
  group), and are swapped in without a restart (:class:`RuleFeed`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time

import orjson

from riskstream.settings import Settings

log = logging.getLogger("riskstream.worker")


class TransactionPath:
    """What the scoring agent does with a batch: labels first, then transactions, through the
    driver to the publisher. Counts what it did in ``stats``."""

    def __init__(self, driver, publisher):
        self.driver = driver
        self.publisher = publisher
        self.stats = {"transactions": 0, "batches": 0, "dead_letters": 0, "labels": 0, "rows": 0}

    def run(self, stream: str, records) -> int:
        """Records of one stream through the driver and into the publisher; returns the good ones."""
        out = self.driver.run(stream, [m.value for m in records], self.publisher,
                              [m.partition for m in records], [m.offset for m in records])
        self.stats["dead_letters"] += len(out.dead)
        return len(records) - len(out.dead)

    # Every registered stream (a test checks). Labels first (a label never waits behind the
    # batch it came with); ticks before positions, which wait for the prices to reach their
    # time (streams.market); credit-line events before the authorisations they settle.
    ORDER = ("labels", "market", "positions", "account_events", "transactions", "loan_applications")

    def score(self, envelope) -> int:
        for stream in self.ORDER:
            records = envelope.records.get(stream)
            if not records:
                continue
            good = self.run(stream, records)
            counted = "rows" if stream not in ("labels", "transactions") else stream
            self.stats[counted] += len(records) if stream == "transactions" else good
        self.stats["batches"] += 1
        return len(envelope.transactions)


class RuleFeed:
    """The whole control topic (``rules``), read without a group. The newest rule set
    published is compiled in the background and swapped in; the newest limit set goes to the
    market processor. A set that fails leaves the old one in force."""

    def __init__(self, settings: Settings, rules_holder, market=None, loans=None, models=None, registry=None):
        self.settings = settings
        self.rules = rules_holder
        self.market = market  # streams.market.MarketRiskProcessor
        self.loans = loans  # streams.loans.LoanProcessor
        self.models = models  # detectors.fraud.FraudModels: pinned to the champion said here
        self.registry = registry  # streams.model_registry.ModelRegistry: the versions' texts
        self.consumer = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        self.consumer = AIOKafkaConsumer(**self.settings.aiokafka_config(), group_id=None,
                                         enable_auto_commit=False, auto_offset_reset="earliest")
        await self.consumer.start()
        self.consumer.assign([TopicPartition(self.settings.topic("rules"), 0)])

    async def stop(self) -> None:
        try:
            await asyncio.wait_for(self.consumer.stop(), timeout=2)
        except Exception:
            pass

    async def poll(self) -> None:
        data = await self.consumer.getmany(timeout_ms=500)
        latest: dict[bytes, bytes] = {}
        for records in data.values():
            for record in records:
                latest[record.key or b"ruleset"] = record.value
        for key, value in latest.items():
            self.apply(key, value)

    def apply(self, key: bytes, value: bytes) -> None:
        """One control record: a limit set (key ``limits``), a credit policy (key
        ``credit_policy``) or a rule set."""
        if key in (b"limits", b"credit_policy"):
            self._swap(key, value)
            return
        if key == b"fraud_model":
            self._pin(value)
            return
        if key != b"ruleset":  # a change waiting for approval, or its decision: not in force
            return
        try:
            published = orjson.loads(value)
            source = published.get("source_name", "rules topic")
            future = self.rules.load_async(published["text"], source,
                                           list_files=published.get("list_files") or None)
            log.warning("rule set %s from %s: compiling", published.get("version"), source)
            future.add_done_callback(lambda f, src=source: _report_compile(f, src))
        except Exception as exc:
            log.error("ignoring unreadable rule set on the rules topic: %s", exc)

    def _swap(self, key: bytes, value: bytes) -> None:
        """A limit set for the market processor, or a credit policy for the loan processor:
        validated, then swapped in; one that fails leaves the one in force."""
        from riskstream.rules.credit_policy import load_credit_policy
        from riskstream.rules.limits import load_limits

        noun, load, target = {b"limits": ("limit set", load_limits, self.market and self.market.set_limits),
                              b"credit_policy": ("credit policy", load_credit_policy,
                                                 self.loans and self.loans.set_policy)}[key]
        if target is None:
            return
        try:
            published = orjson.loads(value)
            loaded = load(published["text"], published.get("source_name", "rules topic"))
            target(loaded)
        except Exception as exc:
            log.error("%s on the rules topic refused, the previous one stays in force: %s", noun, exc)
            return
        log.warning("%s %s in force", noun, loaded.version)


    def _pin(self, value: bytes) -> None:
        """The fraud model an operator chose (``riskstream models promote|rollback``)."""
        if self.models is None:
            return
        from riskstream.detectors.champion import AUTO, ONLINE

        try:
            version = orjson.loads(value)["version"]
            named = version in (ONLINE, AUTO)  # not a registered tree version
            meta = {} if named else self.registry.get(version)
            text = None if named else self.registry.model_text(version)
            if meta is None or (text is None and not named):
                raise KeyError(f"version {version} is not in the model registry")
            self.models.pin(version, text, negative_rate=meta.get("negative_rate", 0.25))
        except Exception as exc:
            log.error("fraud model choice on the rules topic refused, the model deciding stays: %s", exc)
            return
        log.warning("fraud model %s in force (%s)", version, self.models.version)
        if version != AUTO:
            try:  # what a rollback returns to; the periodic report notes it too
                self.registry.note_champion(version, "pinned", self.settings.worker_name or f"pid {os.getpid()}")
            except Exception as exc:
                log.error("model registry not told of the pinned model: %s", exc)


def held_channel(app, maxsize: int):
    """The reader's batches to the scoring agent, in a channel whose buffer survives Faust's
    own rebalances. Faust clears every channel buffer it manages when its group rebalances
    (``flow_control.clear()``): a batch envelope dropped there was never scored, its ``done``
    never set, and the reader waited on it for good. Seen in `riskstream chaos` on Tansu: after
    a few worker kills the consumer group stalled with every worker alive."""
    import faust
    from mode.utils.queues import FlowControlEvent, ThrowableQueue

    always_on = FlowControlEvent(initially_suspended=False)

    class HeldChannel(faust.Channel):
        @property
        def queue(self) -> ThrowableQueue:
            if self._queue is None:
                self._queue = ThrowableQueue(maxsize=self.maxsize, flow_control=always_on, clear_on_resume=False)
            return self._queue

    return HeldChannel(app, maxsize=maxsize)


def faust_app(settings: Settings):
    """The Faust app for these settings: broker, credentials, raw bytes, bounded shutdown."""
    import faust

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
    return faust.App(
        f"{settings.topic_prefix}riskstream",
        broker=[f"kafka://{s}" for s in settings.kafka_servers().split(",")],
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


def build_app(settings: Settings, driver=None):
    """The Faust app with its agents, services and timers, all handing batches to one driver."""
    from mode import Service

    from riskstream.sinks.kafka import OutputPublisher, connect_redis
    from riskstream.streams.driver import Driver
    from riskstream.streams.early_warning import RedisWatch
    from riskstream.streams.ledger import RedisLedger
    from riskstream.streams.outputs import publish
    from riskstream.streams.reader import BatchReader
    from riskstream.streams.decision_memory import DecisionMemory
    from riskstream.streams.model_registry import ModelRegistry, sync_registry
    from riskstream.streams.redis_outage import GuardedLedger, GuardedWatch, RedisGuard
    from riskstream.streams.state import StateStore

    redis_client = connect_redis(settings)
    # The transaction path waits for Redis only briefly, then decides under the outage policy.
    hot_redis = connect_redis(settings, settings.redis_timeout_ms / 1000)
    guard = RedisGuard(hot_redis)
    # Credit lines live in Redis: every worker's authorisations reserve through one atomic script.
    ledger = GuardedLedger(RedisLedger(hot_redis, int(settings.credit_dedup_days * 86_400)), guard)
    driver = driver or Driver(settings, ledger=ledger, watch=GuardedWatch(RedisWatch(hot_redis), guard),
                              memory=DecisionMemory(hot_redis, guard, settings.dedup_window_hours)
                              if settings.dedup_window_hours > 0 else None, train_in_background=True)
    publisher = OutputPublisher(settings, redis_client=hot_redis, transactional_id=output_transactions(settings),
                                redis_guard=guard)
    state_store = StateStore(driver, redis_client, f"{settings.topic_prefix}{settings.consumer_group}")
    if state_store.load_models():
        log.warning("restored model state from Redis: %s", driver.summary())
    path = TransactionPath(driver, publisher)
    reader = BatchReader(settings, driver, state_store, publisher)
    registry = ModelRegistry(redis_client)
    rule_feed = RuleFeed(settings, driver.rules, driver.market, driver.loans, driver.transactions.models, registry)
    watchdog = ShutdownWatchdog(settings.shutdown_timeout_s + 1.5)
    model_audit = ModelAudit(settings)

    app = faust_app(settings)
    app.driver, app.publisher, app.stats = driver, publisher, path.stats
    # The reader's consumer joins its group while Faust starts (run_worker schedules it): on
    # the embedded broker every group join takes 3 s, and Faust joins a group of its own first.
    app.reader, app.reader_started = reader, None
    batches = held_channel(app, maxsize=2)
    acks: set[asyncio.Future] = set()

    async def delivered(produce, *args) -> int:
        """Run ``produce`` (synchronous: no other task interleaves its messages) and wait until
        the broker has acknowledged every message it handed to the publisher."""
        async with reader.committer.lock:  # exactly once: into the open transaction
            publisher.begin_batch()
            try:
                produce(*args)
            finally:
                delivery = publisher.end_batch()
        return await delivery.wait(timeout=60.0)

    async def ack_when_delivered(envelope, delivery, n: int) -> None:
        try:
            await delivery.wait(timeout=60.0)
        except Exception as exc:
            if not envelope.done.done():  # else dropped by a rewind meanwhile
                envelope.done.set_exception(exc)
        else:
            if not envelope.done.done():
                envelope.done.set_result(n)

    @app.agent(batches)
    async def score_transactions(stream):
        # Pipelined: batch N's broker acknowledgement is awaited in the background while
        # batch N+1 is scored; the reader commits batches strictly in order as they complete.
        # Exactly once, a batch is done once scored: the transaction's commit delivers it.
        publisher.start_polling()
        async for envelope in stream:
            async with reader.committer.lock:
                if envelope.done.done():  # dropped by a rewind: it will be read again
                    continue
                publisher.begin_batch()
                try:
                    n = path.score(envelope)
                    envelope.held_accounts = driver.accounts.holding
                except Exception as exc:
                    publisher.end_batch()
                    envelope.done.set_exception(exc)
                    continue
                delivery = publisher.end_batch()
                if reader.committer.transactional:
                    envelope.done.set_result(n)
                    continue
            acks.add(asyncio.ensure_future(ack_when_delivered(envelope, delivery, n)))
            acks.difference_update([t for t in acks if t.done()])

    @app.service
    class TransactionReader(Service):
        """Runs the batch reader; commits after each batch is published."""

        async def on_start(self) -> None:
            await (app.reader_started or reader.start())

        async def on_stop(self) -> None:
            watchdog.start()
            await reader.stop()
            driver.market.close()
            try:
                publisher.flush(timeout=settings.shutdown_timeout_s / 2)
            except Exception as exc:
                log.warning("final flush: %s", exc)

        @Service.task
        async def _read(self) -> None:
            while not self.should_stop:
                envelope = await reader.next_batch()
                if envelope is not None:
                    # The envelope itself, not a Faust event: Faust skips an event stamped
                    # with an older consumer generation, or read while its flow control is
                    # suspended (its own group rebalancing), and a skipped batch is never
                    # scored. Batches carry their own offsets and commit through the reader.
                    await batches.put(envelope)

    @app.service
    class RuleWatcher(Service):
        async def on_start(self) -> None:
            await rule_feed.start()

        async def on_stop(self) -> None:
            await rule_feed.stop()

        @Service.task
        async def _watch(self) -> None:
            while not self.should_stop:
                await rule_feed.poll()

    @app.timer(interval=30.0)
    async def report_models() -> None:
        """Model upkeep (matured negatives, quality rows, drift alerts), between batches."""
        await delivered(lambda: publish(driver.upkeep(), publisher))
        log.warning("%s", driver.summary())
        await asyncio.to_thread(model_audit.check, driver)
        try:
            await asyncio.to_thread(sync_registry, registry, driver.transactions.models,
                                    settings.worker_name or f"pid {os.getpid()}")
        except Exception as exc:  # Redis away: the next report tries again
            log.error("model registry not updated: %s", exc)
            if driver.transactions.models is not None:
                driver.transactions.models._registered = None

    @app.timer(interval=settings.state_checkpoint_interval_s)
    async def checkpoint_state() -> None:
        """State to Redis between batches. A snapshot blocks the loop (~0.4 s per 250k cards),
        so it runs minutes apart; revocation and shutdown save state too."""
        try:
            reader.save_state()
        except Exception as exc:  # Redis away: the next save, or the one at revocation, covers it
            log.error("state checkpoint skipped: %s", exc)

    return app


def audit_thresholds(settings: Settings) -> None:
    """The decision thresholds and policies this worker starts with, in the audit table
    (they change only with a restart, so a start is when they change)."""
    from riskstream.rules.audit import audit_row, write_audit

    text = orjson.dumps({name: getattr(settings, name) for name in THRESHOLD_SETTINGS},
                        option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2).decode()
    try:
        write_audit(settings, [audit_row("started", "thresholds", settings.worker_name or f"pid {os.getpid()}",
                                         settings.operator or "worker", text=text, detail=text)])
    except Exception as exc:  # the worker still decides; the row is what is missing
        log.error("audit row for the thresholds in force not written: %s", exc)


THRESHOLD_SETTINGS = ("step_up_score", "review_score", "decline_score", "credit_near_utilisation",
                      "redis_outage_policy", "processing_guarantee")


class ModelAudit:
    """A model taking over from its cold start (or falling back to it) is a change of what
    decides: audited once per change of stage, not per online update."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.stages: dict[str, str] = {}

    @staticmethod
    def stage(version: str) -> str:
        for prefix in ("fraud-untrained", "fraud-warming-up", "fraud-proving", "fraud-lr"):
            if version.startswith(prefix):
                return prefix
        return version.rstrip("0123456789").rstrip("-") + ("-prior" if version.endswith("-0") else "-learning")

    def check(self, driver) -> None:
        from riskstream.rules.audit import audit_row, write_audit

        rows, stages = [], dict(self.stages)
        for name, version in (("fraud model", driver.transactions.version), ("credit model", driver.loans.version)):
            stage = self.stage(version)
            if stages.get(name) != stage:
                rows.append(audit_row("model_stage", name, version, self.settings.operator or "worker",
                                      detail=f"{stages.get(name, 'start')} -> {stage}"))
                stages[name] = stage
        try:
            write_audit(self.settings, rows)
        except Exception as exc:  # tried again at the next check
            log.error("model audit rows not written: %s", exc)
            return
        self.stages = stages


def output_transactions(settings: Settings) -> str | None:
    """The transactional id of the output producer when exactly once is asked for and the
    broker can keep it; None (at least once) otherwise, said at start-up."""
    from riskstream.sinks.transactions import check_broker, transactional_id

    if settings.processing_guarantee != "exactly_once":
        return None
    refused = check_broker(settings)
    if refused:
        log.error("exactly_once asked for, but %s: running at least once (outputs may repeat after a crash, "
                  "never go missing). Apache Kafka does transactions: riskstream stack up --broker kafka", refused)
        return None
    name = transactional_id(settings)
    log.warning("exactly once: each batch's outputs and input offsets commit in one transaction (id %s)", name)
    return name


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


def faust_worker(app, settings: Settings):
    """Faust's worker without its terminal spinner. To spin on every log record, the spinner
    put the root logger at DEBUG, so every library's debug line became a log record (aiokafka
    writes one for each fetch request): 6% of a worker's time at 1,000 transactions/s
    (bench/results/2026-12-06-worker-per-batch-costs.txt)."""
    import faust

    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
    worker.spinner = None
    return worker


def run_worker(settings: Settings) -> int:
    import faust

    from riskstream.stack import ensure_topics
    from riskstream.streams.driver import tune_garbage_collector

    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ensure_topics(settings)  # idempotent; a real cluster may have auto-creation off
    app = build_app(settings)
    tune_garbage_collector()
    audit_thresholds(settings)
    print(f"worker {os.getpid()}: kafka {settings.kafka_servers()}, rules {app.driver.rules.current.version}, "
          f"batches up to {settings.batch_max_events}, "
          f"{'exactly once' if app.publisher.transactional_id else 'at least once'}", flush=True)
    worker = faust_worker(app, settings)
    app.reader_started = worker.loop.create_task(app.reader.start())  # runs once the loop does
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


