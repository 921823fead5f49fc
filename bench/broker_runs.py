"""Runs against the broker: the drain with N workers, the per-event Faust and raw ``getmany``
baselines on the same topic, and the open-loop latency sweep against a running worker."""

from __future__ import annotations
import argparse
import asyncio
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any
import numpy as np
import orjson
from riskstream.settings import Settings
from riskstream.bench.harness import (
    BenchStack, ProcessGroup, Progress, cpu_seconds, p50_p99, peak_rss_mb, percentiles, quiet, start_worker,
)
from riskstream.bench.workload import Messages


def decisions_consumer(settings: Settings, from_end: bool, topics: tuple[str, ...] = ("decisions",),
                        fetch_wait_ms: int = 20, isolation: str = "read_committed"):
    """A consumer assigned every partition of ``topics``, from the start or from now on; it
    sees what a read-committed (librdkafka's default) or a read-uncommitted reader sees."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**settings.kafka_client_config(), "group.id": f"bench-{os.getpid()}-{time.time_ns()}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "fetch.wait.max.ms": fetch_wait_ms, "isolation.level": isolation})
    parts = []
    for name in topics:
        topic = settings.topic(name)
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        for p in meta.partitions:
            offset = 0
            if from_end:  # only what arrives from now on
                _, offset = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            parts.append(TopicPartition(topic, p, offset))
    consumer.assign(parts)
    return consumer


def leading_id(value: bytes, name: str) -> bytes:
    """The value of string field ``name`` without a JSON parse when it comes first (orjson
    writes decisions with ``event_id`` first; the simulator writes ``transaction_id`` first).
    The bench shares the cores with the worker, so its own per-message cost matters."""
    prefix = b'{"' + name.encode() + b'":"'
    if value.startswith(prefix):
        start = len(prefix)
        return value[start:value.index(b'"', start)]
    return str(orjson.loads(value)[name]).encode()


def event_id_of(value: bytes) -> bytes:
    return leading_id(value, "event_id")


def decided_at_of(value: bytes) -> float:
    """A decision's ``decided_at`` (seconds) without a JSON parse: orjson writes the fields in
    :func:`~riskstream.streams.pipeline.decision_rows` order, where it follows ``event_time``."""
    start = value.find(b'"decided_at":')
    end = value.find(b",", start) if start >= 0 else -1
    if end < 0:
        return float(orjson.loads(value)["decided_at"])
    return float(value[start + len(b'"decided_at":'):end])


def latency_stages(sent: list[float], stamps: list[tuple[float, float]], arrived: list[float]) -> dict[str, dict]:
    """Each decision's latency cut in three, in ms (p50 and p99 of each part):

    - ``to_scoring``: send -> the worker starts scoring the batch: the producer's linger, the
      broker hop, the worker's fetch and batch linger, any queue ahead of the batch, and the
      batch's decode;
    - ``scoring``: -> the decision is handed to the worker's producer: features, rules,
      models, decision and encoding of the whole batch;
    - ``to_reader``: -> the decision reaches the bench's reader: the worker producer's
      linger and the second broker hop.

    The parts come from separate clocks (``decided_at`` and the Kafka timestamp are in ms), so
    their percentiles need not add up to the total's.
    """
    t_sent = np.asarray(sent)
    decided, produced = (np.asarray(c) for c in zip(*stamps))
    t_arrived = np.asarray(arrived)
    return {"to_scoring": p50_p99((decided - t_sent) * 1000.0),
            "scoring": p50_p99((produced - decided) * 1000.0),
            "to_reader": p50_p99((t_arrived - produced) * 1000.0)}


# ------------------------------------------------------------------------------------------
# 1. throughput: drain a preloaded topic
# ------------------------------------------------------------------------------------------
@dataclass
class DrainResult:
    workers: int
    transactions: int
    decided: int
    duplicates: int
    seconds: float
    tps: float
    cpu_s: dict[str, float]
    cpu_us_per_txn: dict[str, float]
    worker_peak_rss_mb: list[float]
    startup_s: float
    complete: bool

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _committed(consumer, partitions: list) -> int:
    """Transactions the worker group has committed: a worker commits a batch only after the
    broker acknowledged all its outputs, decisions included. (Tansu's high watermarks lag
    the last batch of each partition, so the decisions topic's watermarks cannot be used.)"""
    return sum(max(tp.offset, 0) for tp in consumer.committed(partitions, timeout=10))


def count_decisions(settings: Settings, expected: int, timeout_s: float = 60.0) -> tuple[int, int]:
    """(distinct event ids, messages) on the decisions topic, read after the timed drain."""
    consumer = decisions_consumer(settings, from_end=False, fetch_wait_ms=100)
    seen: set[bytes] = set()
    total = 0
    deadline = time.monotonic() + timeout_s
    try:
        while len(seen) < expected and time.monotonic() < deadline:
            for m in consumer.consume(10000, timeout=0.2):
                if not m.error():
                    seen.add(event_id_of(m.value()))
                    total += 1
    finally:
        consumer.close()
    return len(seen), total


def settle_group(bs: BenchStack, workers: list[subprocess.Popen], warm: int, watcher, partitions: list,
                 progress: Progress = quiet, timeout_s: float = 120.0) -> None:
    """Wait until the ``warm`` preloaded transactions are committed (read with ``watcher``)
    and every worker holds partitions, with no new assignment for a second: the group is
    steady and warm."""
    logs = [bs.settings.data_dir / "logs" / f"bench-worker-{i}.log" for i in range(len(workers))]
    deadline = time.monotonic() + timeout_s
    last_seen: list[int] = []
    steady_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if any(w.poll() is not None for w in workers):
            raise RuntimeError(f"a worker exited while the group settled; see {bs.settings.data_dir / 'logs'}")
        seen = [log.read_text(errors="replace").count("assigned transaction partitions") if log.exists() else 0
                for log in logs]
        if seen != last_seen:
            last_seen, steady_since = seen, time.monotonic()
        if all(seen) and time.monotonic() - steady_since >= 1.0 and _committed(watcher, partitions) >= warm:
            progress(f"  group steady: {len(workers)} worker(s) hold partitions, {warm:,} warm-up transactions decided")
            return
    raise RuntimeError(f"the worker group did not settle within {timeout_s:.0f}s")


def drain_throughput(bs: BenchStack, group: ProcessGroup, n_workers: int, expected: int,
                     progress: Progress = quiet, stall_s: float = 90.0, keep_running: bool = False,
                     warm: int = 0, feed=None) -> tuple[DrainResult, list[subprocess.Popen]]:
    """Start workers on a preloaded topic; time the first to the last transaction decided.

    With ``warm`` and ``feed``, the topic holds ``warm`` transactions when the workers start;
    once they are decided and the group is steady (:func:`settle_group`), ``feed()`` produces
    the ``expected`` timed ones. Otherwise a drain of a few seconds with 2 workers measures
    the second worker's join: on Kafka that rebalance took seconds of a 200,000-transaction
    drain (18,174 tx/s with 2 workers against 58,645 with 1, in one run).

    A transaction counts as decided when the workers commit its offset, which they do only
    once the broker has acknowledged the batch's outputs (decisions topic, sink rows, alerts).
    The timed part polls those commits rather than reading every decision on the same 2 cores
    (the reader alone cost ~3.4 µs a transaction); the decisions topic is read and checked
    for exactly one decision per transaction afterwards. CPU is sampled at the first and the
    last commit, so start-up (imports, numba cache, the group join) is not charged.
    """
    from confluent_kafka import Consumer, TopicPartition

    s = bs.settings
    watcher = Consumer({**s.kafka_client_config(), "group.id": f"{s.topic_prefix}{s.consumer_group}",
                        "enable.auto.commit": False})  # never subscribes: only reads the group's commits
    topic = s.topic("transactions")
    partitions = [TopicPartition(topic, p) for p in watcher.list_topics(topic, timeout=10).topics[topic].partitions]
    t_launch, t_launch_wall = time.monotonic(), time.time()
    workers = [start_worker(bs, group, i) for i in range(n_workers)]
    roles = bs.roles(workers)

    def cpu_now() -> dict[str, float]:  # workers and stack are our children; "bench" is us alone
        return {r: cpu_seconds(p, children=r != "bench") for r, p in roles.items()}

    cpu0: dict[str, float] = {}
    cpu1: dict[str, float] = {}
    fed_at = None
    count = first_group = 0
    first_t = last_t = 0.0
    try:
        if feed is not None:  # timed from the first timed transaction produced: a short drain
            settle_group(bs, workers, warm, watcher, partitions, progress)  # may take one commit
            fed_at = time.time()
            cpu0 = cpu_now()
            feed()
        last_print = time.monotonic()
        last_count_change = time.monotonic()
        while count < expected:
            time.sleep(0.02)
            produced = _committed(watcher, partitions) - warm
            now_wall = time.time()
            if produced > count:
                if not count and fed_at is not None:
                    first_t = fed_at
                elif not count:
                    first_t, first_group = now_wall, produced
                    cpu0 = cpu_now()
                    progress(f"  first decision {time.monotonic() - t_launch:.1f}s after the worker start")
                count = produced
                last_t = now_wall
                last_count_change = time.monotonic()
                if count >= expected:  # the end of the timed part: sample CPU right away
                    cpu1 = cpu_now()
            now = time.monotonic()
            if now - last_print >= 1.0:
                rate = count / max(1e-6, last_t - first_t) if count else 0.0
                progress(f"  [{now - t_launch:5.1f}s] decided {count:>9,}/{expected:,} ({rate:,.0f}/s since first)")
                last_print = now
            if any(w.poll() is not None for w in workers):
                raise RuntimeError(f"a worker exited ({[w.poll() for w in workers]}); see {bs.settings.data_dir / 'logs'}")
            if now - last_count_change > stall_s:
                progress(f"  no new decision for {stall_s:.0f}s: stopping this run")
                break
        cpu1 = cpu1 or cpu_now()
        rss = [peak_rss_mb(w.pid) for w in workers]
    finally:
        watcher.close()
        if not keep_running:
            for w in workers:
                group.stop(w)
    decided, messages = count_decisions(bs.settings, expected + warm)
    decided, messages = decided - warm, messages - warm
    progress(f"  checked afterwards: {decided:,} distinct decisions in {messages:,} messages")
    seconds = max(last_t - first_t, 1e-6)
    cpu = {r: round(cpu1.get(r, 0.0) - cpu0.get(r, 0.0), 3) for r in roles}
    return DrainResult(
        workers=n_workers, transactions=expected, decided=decided, duplicates=messages - decided,
        seconds=round(seconds, 3),
        # Decisions arrive in batches: count those after the first arrival, over the time from
        # the first arrival to the last. A drain that arrives all at once gives no rate.
        tps=round((count - first_group) / seconds, 1) if count > first_group else 0.0,
        cpu_s=cpu, cpu_us_per_txn={r: round(v / max(count, 1) * 1e6, 2) for r, v in cpu.items()},
        worker_peak_rss_mb=[round(r, 1) for r in rss], startup_s=round(first_t - t_launch_wall, 2) if count else 0.0,
        complete=decided >= expected,
    ), workers


# ------------------------------------------------------------------------------------------
# 3. baselines on the same topic
# ------------------------------------------------------------------------------------------
def faust_counter_main(argv: list[str]) -> int:
    """A plain per-event Faust agent that does nothing but count (the framework's floor)."""
    import faust

    ap = argparse.ArgumentParser()
    ap.add_argument("--broker", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--partitions", type=int, required=True)
    ap.add_argument("--datadir", required=True)
    args = ap.parse_args(argv)
    app = faust.App(f"bench-faust-{os.getpid()}", broker=f"kafka://{args.broker}", value_serializer="raw",
                    key_serializer="raw", store="memory://", datadir=args.datadir, web_enabled=False,
                    topic_partitions=args.partitions, broker_session_timeout=6.0, broker_heartbeat_interval=1.0,
                    consumer_auto_offset_reset="earliest", stream_wait_empty=False)
    topic = app.topic(args.topic, value_serializer="raw", key_serializer="raw", partitions=args.partitions)
    stats = {"count": 0, "first": 0.0, "last": 0.0}

    @app.agent(topic)
    async def count_events(stream):
        async for _value in stream:
            if not stats["count"]:
                stats["first"] = time.time()
            stats["count"] += 1
            stats["last"] = time.time()

    @app.timer(0.5)
    async def report():
        # One line per tick on stdout: the parent reads the latest.
        sys.stdout.write(orjson.dumps(stats).decode() + "\n")
        sys.stdout.flush()

    worker = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def faust_per_event_drain(bs: BenchStack, group: ProcessGroup, expected: int, progress: Progress = quiet,
                          timeout_s: float = 120.0) -> dict[str, Any]:
    from riskstream.stack import _die_with_parent

    s = bs.settings
    datadir = s.data_dir / "faust-baseline"
    datadir.mkdir(parents=True, exist_ok=True)
    log = open(s.data_dir / "logs" / "bench-faust-baseline.log", "ab")
    proc = group.add(subprocess.Popen(
        [sys.executable, "-m", "riskstream.bench.engine_bench", "faust-counter", "--broker", s.kafka_bootstrap,
         "--topic", s.topic("transactions"), "--partitions", str(s.topic_partitions), "--datadir", str(datadir)],
        stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent))
    latest: dict[str, Any] = {"count": 0, "first": 0.0, "last": 0.0}

    def read() -> None:
        for line in proc.stdout:
            try:
                latest.update(orjson.loads(line))
            except orjson.JSONDecodeError:
                pass

    threading.Thread(target=read, daemon=True, name="faust-baseline-stdout").start()
    t0 = time.monotonic()
    last_print = t0
    try:
        while latest["count"] < expected and time.monotonic() - t0 < timeout_s:
            if proc.poll() is not None:
                raise RuntimeError(f"Faust baseline exited with {proc.returncode}; see {log.name}")
            time.sleep(0.2)
            if time.monotonic() - last_print >= 2.0:
                c = latest["count"]
                rate = c / max(1e-6, latest["last"] - latest["first"]) if c else 0.0
                progress(f"  [{time.monotonic() - t0:5.1f}s] Faust per-event agent counted {c:,}/{expected:,} ({rate:,.0f}/s)")
                last_print = time.monotonic()
    finally:
        group.stop(proc)
        log.close()
    c = latest["count"]
    secs = max(latest["last"] - latest["first"], 1e-6)
    return {"events": c, "seconds": round(secs, 3), "tps": round((c - 1) / secs, 1) if c > 1 else 0.0,
            "complete": c >= expected}


def raw_getmany_drain(settings: Settings, expected: int, max_records: int = 10000) -> dict[str, Any]:
    """aiokafka getmany over every partition, from the beginning, counting: the client's ceiling."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def run() -> dict[str, Any]:
        consumer = AIOKafkaConsumer(**settings.aiokafka_config(), group_id=None, enable_auto_commit=False,
                                    auto_offset_reset="earliest", max_partition_fetch_bytes=8 * 1024 * 1024,
                                    fetch_max_bytes=64 * 1024 * 1024)
        await consumer.start()
        try:
            topic = settings.topic("transactions")
            parts = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            count, first, last = 0, 0.0, 0.0
            deadline = time.monotonic() + 120
            while count < expected and time.monotonic() < deadline:
                data = await consumer.getmany(timeout_ms=500, max_records=max_records)
                got = sum(len(v) for v in data.values())
                if got:
                    if not count:
                        first = time.perf_counter()
                    count += got
                    last = time.perf_counter()
            # The first batch arrives at `first`: rate over the records after it.
            secs = max(last - first, 1e-6)
            return {"events": count, "seconds": round(secs, 3), "complete": count >= expected,
                    "tps": round(count / secs, 1) if count > 1 else 0.0}
        finally:
            await consumer.stop()

    return asyncio.run(run())


# ------------------------------------------------------------------------------------------
# 2. latency: open-loop producer at fixed offered rates
# ------------------------------------------------------------------------------------------
def latency_at_rates(settings: Settings, msgs: Messages, start: int, rates: list[int], seconds: float,
                     progress: Progress = quiet, drain_s: float = 15.0,
                     roles: dict[str, list[int]] | None = None,
                     service_linger_ms: float = 5.0) -> tuple[dict[str, dict], int]:
    """Offer each rate for ``seconds``; latency = decision arrival - send (both ``time.time()``).

    Open loop: message i is due at t0 + i/rate whatever the engine does, so queueing shows
    up as latency instead of slowing the producer down. Returns (per-rate stats, next index).
    ``roles`` (name -> pids): each one's CPU share while the rate is offered, in % of a core.
    """
    from confluent_kafka import Producer

    sent: dict[bytes, float] = {}
    arrived: dict[bytes, float] = {}
    # Where each decision's time went, from two clocks the decision carries: its
    # ``decided_at`` (when the worker started scoring its batch) and its Kafka timestamp (when
    # the worker handed it to its producer). Same machine, same clock as ``sent``.
    stamps: dict[bytes, tuple[float, float]] = {}
    # The input messages read back by the same consumer: the broker round trip alone (the
    # floor under the engine's latency on this machine).
    echoed: dict[bytes, float] = {}
    stop = threading.Event()
    consumer = decisions_consumer(settings, from_end=True, topics=("decisions", "transactions"),
                                   fetch_wait_ms=settings.fetch_max_wait_ms)
    input_topic = settings.topic("transactions")

    def consume() -> None:
        while not stop.is_set():
            # consume(n, timeout) returns early only once it holds n messages: a short timeout,
            # or every arrival would wait up to it (a bias of ~timeout/2 on every latency).
            for m in consumer.consume(10000, timeout=0.001):
                if m.error():
                    continue
                now = time.time()
                if m.topic() == input_topic:
                    echoed.setdefault(leading_id(m.value(), "transaction_id"), now)
                else:
                    event_id = event_id_of(m.value())
                    if event_id not in arrived:
                        arrived[event_id] = now
                        stamps[event_id] = (decided_at_of(m.value()), m.timestamp()[1] / 1000.0)

    reader = threading.Thread(target=consume, daemon=True, name="latency-consumer")
    reader.start()
    # ``service_linger_ms``: how long a transaction service gathers transactions into one
    # request. 5 gives the lowest latency on Tansu (1 floods it with requests); on Kafka 0
    # could not offer 10,000/s, and 1 halves the broker hop when a core is free
    # (bench/results/2026-12-06-worker-per-batch-costs.txt).
    producer = Producer({**settings.kafka_client_config(), "linger.ms": service_linger_ms, "compression.type": "lz4",
                         "queue.buffering.max.messages": 2_000_000})
    topic = settings.topic("transactions")
    out: dict[str, dict] = {}
    i = start
    try:
        for rate in rates:
            n = int(rate * seconds)
            if i + n > msgs.n:
                raise ValueError(f"not enough simulated messages for {rate}/s x {seconds}s")
            ids = [t.encode() for t in msgs.ids[i:i + n]]
            progress(f"  offering {rate:,}/s for {seconds:.0f}s ({n:,} transactions) ...")
            cpu0 = {r: cpu_seconds(p, children=False) for r, p in (roles or {}).items()}
            t0 = time.perf_counter()
            k = 0
            behind_max = 0.0
            while k < n:
                due = min(n, int((time.perf_counter() - t0) * rate) + 1)
                if due - k > 1:
                    behind_max = max(behind_max, (due - k) / rate)
                while k < due:
                    j = i + k
                    sent[ids[k]] = time.time()
                    try:
                        producer.produce(topic, value=msgs.values[j], key=msgs.keys[j])
                    except BufferError:
                        producer.poll(0.01)
                        producer.produce(topic, value=msgs.values[j], key=msgs.keys[j])
                    k += 1
                producer.poll(0)
                sleep = t0 + k / rate - time.perf_counter()
                if sleep > 0:
                    time.sleep(min(sleep, 0.002))
            producer.flush(30)
            offered_s = time.perf_counter() - t0
            offered = n / offered_s
            cpu_share = {r: round(100.0 * (cpu_seconds(p, children=False) - cpu0[r]) / offered_s, 1)
                         for r, p in (roles or {}).items()}
            deadline = time.monotonic() + drain_s
            while time.monotonic() < deadline and sum(1 for t in ids if t in arrived) < n:
                time.sleep(0.1)
            decided = [t for t in ids if t in arrived]
            got = len(decided)
            stats = {"offered_tps": round(offered, 1), "sent": n, "decided": got, "missing": n - got,
                     "cpu_percent_of_a_core": cpu_share}
            if got:
                times_sent = [sent[t] for t in decided]
                times_arrived = [arrived[t] for t in decided]
                lat = (np.asarray(times_arrived) - np.asarray(times_sent)) * 1000.0
                stats.update(percentiles(lat, "p50", "p95", "p99", "max", "mean"))
                stats["stages_ms"] = latency_stages(times_sent, [stamps[t] for t in decided], times_arrived)
            floor = np.array([echoed[t] - sent[t] for t in ids if t in echoed]) * 1000.0
            if len(floor):
                stats["broker_round_trip_ms"] = p50_p99(floor)
            out[str(rate)] = stats
            progress(f"    offered {offered:,.0f}/s: p50 {stats.get('p50', float('nan')):.1f} ms, "
                     f"p95 {stats.get('p95', float('nan')):.1f}, p99 {stats.get('p99', float('nan')):.1f}, "
                     f"max {stats.get('max', float('nan')):.1f}; {got:,}/{n:,} decided; broker round trip "
                     f"p50/p99 {stats.get('broker_round_trip_ms', {})}; stages p50/p99 {stats.get('stages_ms', {})}"
                     + (f"; CPU % of a core {cpu_share}" if cpu_share else ""))
            i += n
    finally:
        stop.set()
        reader.join(2)
        consumer.close()
    return out, i
