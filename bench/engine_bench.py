"""End-to-end and in-process measurements of the transaction path (``riskstream bench``).

Every figure here comes from the real thing: the embedded stack (Tansu broker, Valkey, the
ClickHouse sink on chDB), real ``riskstream worker`` processes and the engine's own
functions. Nothing is asserted on timings: the numbers are for reading, and on a shared
2-core machine they are noisy (the bench's producer/consumer, the broker, the sink and the
workers all share the cores).

Pieces, each usable alone:

* :func:`build_messages` - simulated transactions serialised once (orjson, keyed by card);
* :func:`drain_throughput` - preload a topic, start N workers, time the drain on ``decisions``;
* :func:`faust_per_event_drain`, :func:`raw_getmany_drain` - the baselines on the same topic;
* :func:`latency_at_rates` - open-loop producer at fixed rates against a running worker;
* :func:`engine_latency` - the same open-loop arrivals straight into the engine (its own share);
* :func:`offline_replay`, :func:`stage_profile` - in-process throughput and per-stage costs;
* :func:`memory_at_cards` - state bytes per card and peak RSS (run in its own process through
  ``python -m riskstream.bench.engine_bench memory`` so the peak is the engine's alone).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import orjson
import psutil

from riskstream.settings import Settings
from riskstream.streams.pipeline import SCORER_STAGES
from riskstream.schemas.events import DAY_MS

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# ------------------------------------------------------------------------------------------
# machine and process measurements
# ------------------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def peak_rss_mb(pid: int | None = None) -> float:
    """VmHWM (the kernel's peak resident set) of a process, in MB; psutil only has current RSS."""
    try:
        with open(f"/proc/{pid or os.getpid()}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def cpu_seconds(pids: list[int], children: bool = True) -> float:
    """user+sys of these processes (and their children); a process that is gone counts 0."""
    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            procs = [proc, *proc.children(recursive=True)] if children else [proc]
        except psutil.Error:
            continue
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
    return total


# ------------------------------------------------------------------------------------------
# input
# ------------------------------------------------------------------------------------------
@dataclass
class Messages:
    """Simulated transactions: columns (for the in-process runs) and the same rows as Kafka
    messages (for the broker runs), in event-time order."""

    columns: dict[str, np.ndarray]
    keys: list[bytes]
    values: list[bytes]
    ids: list[str]
    sim_labels: dict[str, np.ndarray] | None = None  # the simulator's labels, by label time

    @property
    def n(self) -> int:
        return len(self.values)

    def column_slice(self, start: int, stop: int) -> dict[str, np.ndarray]:
        return {k: v[start:stop] for k, v in self.columns.items()}

    def head(self, n: int) -> "Messages":
        """The first n messages, with their labels only."""
        return Messages({k: v[:n] for k, v in self.columns.items()}, self.keys[:n], self.values[:n], self.ids[:n],
                        self.labels(0, n))

    def labels(self, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        """The simulator's labels (chargebacks, analyst verdicts both ways) of rows [start, stop),
        in label-time order."""
        stop = self.n if stop is None else stop
        if not self.sim_labels:
            return {}
        if start == 0 and stop == self.n:
            return self.sim_labels  # build_messages and head keep only the labels of their rows
        ids = set(self.ids[start:stop])  # a set: np.isin on object arrays took seconds here
        mine = np.fromiter(map(ids.__contains__, self.sim_labels["event_id"]), bool, len(self.sim_labels["event_id"]))
        return {k: v[mine] for k, v in self.sim_labels.items()}

    def label_messages(self, start: int = 0, stop: int | None = None) -> list[tuple[bytes, bytes]]:
        """The same labels as (key, JSON value) for the labels topic, keyed by card."""
        labels = self.labels(start, stop)
        if not labels:
            return []
        names = list(labels)
        rows = zip(*(labels[c].tolist() for c in names))
        return [(r["entity_id"].encode(), orjson.dumps(r)) for r in (dict(zip(names, row)) for row in rows)]


def simulation_start_ms(days: int, now_ms: int) -> int:
    """Where the bench's simulated traffic starts: a Monday, 00:00 UTC, so that the last of
    ``days`` simulated days ends at least an hour before ``now_ms`` (event times more than a
    day ahead are refused) and at most a week and an hour before it.

    On a week boundary every run of the same week simulates the same traffic, and later weeks
    the same traffic shifted by whole weeks: the simulator shapes days and weeks in UTC, so a
    start at the time of the run gave each run its own mix (the last two full runs before this:
    the fraud model ready for 92% and 82% of the transactions, 9,238 and 5,444 alerts)."""
    latest_day = (now_ms - 3_600_000) // DAY_MS - days  # the first day that ends an hour ago
    monday = latest_day - (latest_day + 3) % 7  # 1970-01-01 was a Thursday
    return int(monday * DAY_MS)


def build_messages(n: int, seed: int = 11, progress: Progress = _quiet, extra: int = 0) -> Messages:
    """``n`` simulated transactions (all scenarios on), then ``extra`` more from the days
    after (the latency runs' own), serialised once with orjson, and the
    simulator's labels for them (``Messages.labels``): chargebacks and analyst verdicts, 30
    minutes to 30 days late. With them the fraud model gets ready (both outcomes seen) early
    and decides, as a deployed one would; without them it would stay warming up, and the
    bench would measure a rules-only engine. The customers are sized for ``n`` over 14 days,
    so the first ``n`` are about two weeks of traffic whatever ``extra`` is: the drain's
    workload does not change with the latency settings."""
    from riskstream.schemas.events import json_documents
    from riskstream.simulate import simulate

    days = 14 if n >= 20_000 else 7
    # ~2.5 transactions per customer per day (simulate's docstring); a little spare.
    customers = max(100, int(n / (days * 2.2)) + 1)
    terminals = max(60, customers // 4)
    total = n + extra
    sim_days = days + int(np.ceil(days * extra / max(n, 1)))
    start_ms = simulation_start_ms(sim_days, int(time.time() * 1000))
    t0 = time.perf_counter()
    while True:
        sim = simulate(days=sim_days, customers=customers, terminals=terminals, seed=seed, start_ms=start_ms,
                       with_market=False, with_credit=False)
        if len(sim.transactions["amount"]) >= total:
            break
        sim_days += max(1, sim_days // 4)
        start_ms = simulation_start_ms(sim_days, int(time.time() * 1000))
    tx = {k: v[:total] for k, v in sim.transactions.items() if k not in ("is_fraud", "fraud_scenario")}
    ids = set(tx["transaction_id"].tolist())  # the simulation may run past them: their labels, not all
    mine = np.fromiter(map(ids.__contains__, sim.labels["event_id"]), bool, len(sim.labels["event_id"]))
    order = np.flatnonzero(mine)[np.argsort(sim.labels["label_time"][mine], kind="stable")]
    labels = {k: v[order] for k, v in sim.labels.items()}
    progress(f"simulated {total:,} transactions ({customers:,} customers, {sim_days} days) in {time.perf_counter() - t0:.1f}s")
    t0 = time.perf_counter()
    names = list(tx)
    # Half a million rows allocate millions of objects that all live on: the cycle collector
    # would walk the growing heap again and again (measured 13.9 s for 570k rows with it).
    gc.disable()
    try:
        values = json_documents(dict(zip(names, row)) for row in zip(*(tx[c].tolist() for c in names)))
    finally:
        gc.enable()
    keys = [c.encode() for c in tx["card_id"].tolist()]
    progress(f"serialised {total:,} messages with orjson in {time.perf_counter() - t0:.1f}s "
             f"(mean {sum(map(len, values)) / max(total, 1):.0f} bytes)")
    return Messages(tx, keys, values, tx["transaction_id"].tolist(), labels)


# ------------------------------------------------------------------------------------------
# the stack and processes
# ------------------------------------------------------------------------------------------
class ProcessGroup:
    """Every subprocess the bench starts, so that one place stops them all (exit, Ctrl-C)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def add(self, proc: subprocess.Popen) -> subprocess.Popen:
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 10.0) -> None:
        from riskstream.stack import stop_process

        stop_process(proc, timeout)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.procs):
            self.stop(proc, timeout=5.0)


@dataclass
class BenchStack:
    """An attached EmbeddedStack with its client settings."""

    stack: Any
    settings: Settings  # points clients at this stack explicitly
    state: dict

    def service_pids(self) -> dict[str, int]:
        return {s.name: s.process.pid for s in self.stack.services}

    def roles(self, workers: list[subprocess.Popen]) -> dict[str, list[int]]:
        """Process ids by role, for CPU accounting: workers, each service, and this process."""
        return {"workers": [w.pid for w in workers], **{k: [v] for k, v in self.service_pids().items()},
                "bench": [os.getpid()]}


def start_stack(base: Settings, data_dir: Path, progress: Progress = _quiet) -> BenchStack:
    from pydantic import SecretStr

    from riskstream.stack import EmbeddedStack

    settings = base.model_copy(update={"data_dir": data_dir, "kafka_bootstrap": "", "redis_url": SecretStr("")})
    stack = EmbeddedStack(settings, with_sink=True)
    t0 = time.perf_counter()
    stack.start(progress=lambda s: progress(f"  {s}"))
    state = settings.stack_state()
    client = settings.model_copy(update={"kafka_bootstrap": state["kafka"], "redis_url": SecretStr(state["redis"])})
    progress(f"  stack up in {time.perf_counter() - t0:.1f}s")
    return BenchStack(stack, client, state)


def start_worker(bs: BenchStack, group: ProcessGroup, index: int) -> subprocess.Popen:
    from riskstream.stack import _die_with_parent

    s = bs.settings
    env = dict(os.environ)
    env.update({
        "RISKSTREAM_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
        "RISKSTREAM_REDIS_URL": s.redis_url.get_secret_value(),
        "RISKSTREAM_DATA_DIR": str(s.data_dir),
        "RISKSTREAM_SESSION_TIMEOUT_MS": str(s.session_timeout_ms),
        "RISKSTREAM_TOPIC_PARTITIONS": str(s.topic_partitions),
    })
    log = s.data_dir / "logs" / f"bench-worker-{index}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return group.add(subprocess.Popen([sys.executable, "-m", "riskstream", "worker"], env=env, stdout=out,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          preexec_fn=_die_with_parent))


def preload(settings: Settings, msgs: Messages, start: int = 0, stop: int | None = None,
            progress: Progress = _quiet) -> float:
    """Produce messages [start, stop) to the transactions topic, and their labels to the
    labels topic first (the worker holds each until event time reaches its label time);
    returns transactions/s."""
    from confluent_kafka import Producer

    stop = msgs.n if stop is None else stop
    producer = Producer({**settings.kafka_client_config(), "linger.ms": 5, "batch.num.messages": 10000,
                         "queue.buffering.max.messages": 2_000_000, "compression.type": "lz4"})
    labels = msgs.label_messages(start, stop)
    for key, value in labels:
        producer.produce(settings.topic("labels"), value=value, key=key)
    topic = settings.topic("transactions")
    t0 = time.perf_counter()
    for i in range(start, stop):
        try:
            producer.produce(topic, value=msgs.values[i], key=msgs.keys[i])
        except BufferError:
            producer.poll(0.05)
            producer.produce(topic, value=msgs.values[i], key=msgs.keys[i])
        if i % 20000 == 0:
            producer.poll(0)
    left = producer.flush(60)
    if left:
        raise RuntimeError(f"preload: {left} messages not acknowledged")
    rate = (stop - start) / (time.perf_counter() - t0)
    progress(f"  preloaded {stop - start:,} transactions at {rate:,.0f}/s and {len(labels):,} labels")
    return rate


def _decisions_consumer(settings: Settings, from_end: bool, topics: tuple[str, ...] = ("decisions",),
                        fetch_wait_ms: int = 20):
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**settings.kafka_client_config(), "group.id": f"bench-{os.getpid()}-{time.time_ns()}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "fetch.wait.max.ms": fetch_wait_ms})
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


def _leading_id(value: bytes, name: str) -> bytes:
    """The value of string field ``name`` without a JSON parse when it comes first (orjson
    writes decisions with ``event_id`` first; the simulator writes ``transaction_id`` first).
    The bench shares the cores with the worker, so its own per-message cost matters."""
    prefix = b'{"' + name.encode() + b'":"'
    if value.startswith(prefix):
        start = len(prefix)
        return value[start:value.index(b'"', start)]
    return str(orjson.loads(value)[name]).encode()


def _event_id(value: bytes) -> bytes:
    return _leading_id(value, "event_id")


def _decided_at(value: bytes) -> float:
    """A decision's ``decided_at`` (seconds) without a JSON parse: orjson writes the fields in
    :func:`~riskstream.streams.pipeline.decision_rows` order, where it follows ``event_time``."""
    start = value.find(b'"decided_at":')
    end = value.find(b",", start) if start >= 0 else -1
    if end < 0:
        return float(orjson.loads(value)["decided_at"])
    return float(value[start + len(b'"decided_at":'):end])


def _summary(ms: np.ndarray, *names: str) -> dict[str, float]:
    """Named figures of a latency sample in ms ("p50", "p99", ..., "max", "mean"), rounded."""
    def one(name: str) -> float:
        if name == "max":
            return float(ms.max())
        if name == "mean":
            return float(ms.mean())
        return float(np.percentile(ms, float(name[1:])))
    return {name: round(one(name), 2) for name in names}


def _p50_p99(ms: np.ndarray) -> dict[str, float]:
    return _summary(ms, "p50", "p99")


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
    return {"to_scoring": _p50_p99((decided - t_sent) * 1000.0),
            "scoring": _p50_p99((produced - decided) * 1000.0),
            "to_reader": _p50_p99((t_arrived - produced) * 1000.0)}


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
    consumer = _decisions_consumer(settings, from_end=False, fetch_wait_ms=100)
    seen: set[bytes] = set()
    total = 0
    deadline = time.monotonic() + timeout_s
    try:
        while len(seen) < expected and time.monotonic() < deadline:
            for m in consumer.consume(10000, timeout=0.2):
                if not m.error():
                    seen.add(_event_id(m.value()))
                    total += 1
    finally:
        consumer.close()
    return len(seen), total


def drain_throughput(bs: BenchStack, group: ProcessGroup, n_workers: int, expected: int,
                     progress: Progress = _quiet, stall_s: float = 90.0,
                     keep_running: bool = False) -> tuple[DrainResult, list[subprocess.Popen]]:
    """Start workers on a preloaded topic; time the first to the last transaction decided.

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
    count = first_group = 0
    first_t = last_t = 0.0
    cpu0: dict[str, float] = {}
    cpu1: dict[str, float] = {}
    last_print = time.monotonic()
    last_count_change = time.monotonic()
    try:
        while count < expected:
            time.sleep(0.02)
            produced = _committed(watcher, partitions)
            now_wall = time.time()
            if produced > count:
                if not count:
                    first_t, first_group = now_wall, produced
                    cpu0 = {r: cpu_seconds(p, children=r != "bench") for r, p in roles.items()}
                    progress(f"  first decision {time.monotonic() - t_launch:.1f}s after the worker start")
                count = produced
                last_t = now_wall
                last_count_change = time.monotonic()
                if count >= expected:  # the end of the timed part: sample CPU right away
                    cpu1 = {r: cpu_seconds(p, children=r != "bench") for r, p in roles.items()}
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
        # The workers and the stack are children of this process: "bench" is this process alone.
        cpu1 = cpu1 or {r: cpu_seconds(p, children=r != "bench") for r, p in roles.items()}
        rss = [peak_rss_mb(w.pid) for w in workers]
    finally:
        watcher.close()
        if not keep_running:
            for w in workers:
                group.stop(w)
    decided, messages = count_decisions(bs.settings, expected)
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
def _faust_counter_main(argv: list[str]) -> int:
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


def faust_per_event_drain(bs: BenchStack, group: ProcessGroup, expected: int, progress: Progress = _quiet,
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
                     progress: Progress = _quiet, drain_s: float = 15.0,
                     roles: dict[str, list[int]] | None = None) -> tuple[dict[str, dict], int]:
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
    consumer = _decisions_consumer(settings, from_end=True, topics=("decisions", "transactions"),
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
                    echoed.setdefault(_leading_id(m.value(), "transaction_id"), now)
                else:
                    event_id = _event_id(m.value())
                    if event_id not in arrived:
                        arrived[event_id] = now
                        stamps[event_id] = (_decided_at(m.value()), m.timestamp()[1] / 1000.0)

    reader = threading.Thread(target=consume, daemon=True, name="latency-consumer")
    reader.start()
    # linger 5 ms: on the embedded broker fewer, larger produce requests give the lowest
    # latency (measured: 1 ms floods it with requests).
    producer = Producer({**settings.kafka_client_config(), "linger.ms": 5, "compression.type": "lz4",
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
                stats.update(_summary(lat, "p50", "p95", "p99", "max", "mean"))
                stats["stages_ms"] = latency_stages(times_sent, [stamps[t] for t in decided], times_arrived)
            floor = np.array([echoed[t] - sent[t] for t in ids if t in echoed]) * 1000.0
            if len(floor):
                stats["broker_round_trip_ms"] = _p50_p99(floor)
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


def engine_latency(settings: Settings, msgs: Messages, start: int, rates: list[int], seconds: float,
                   lingers_ms: list[int], warm: int = 100_000,
                   progress: Progress = _quiet) -> tuple[dict[str, dict[str, dict]], int]:
    """The engine's own share of the latency at each offered rate, with no broker.

    Message i arrives at ``t0 + i / rate`` on the wall clock whatever the engine does (open
    loop). A loop that batches as the worker's reader does (wait for data, then the linger for
    more, up to ``batch_max_events``) decodes, scores and encodes each batch with the real
    engine, labels fed in event time. Latency = the batch's outputs encoded - the arrival.
    The engine first runs the ``warm`` transactions before ``start`` (feature state filled,
    fraud model ready), as a worker that has been running; the garbage collector is tuned as
    the worker tunes it. Each linger takes the next ``sum(rates) * seconds`` transactions.

    Left out, and measured by the broker run: the hop to the worker, its fetch, handing the
    outputs to the producer and the hop to the reader. What shows here is a batch's fixed cost
    (~1.5-2 ms), the linger, and the batch in which the model learns (every 5,000 decisions,
    4-6 ms more).

    Returns ({"linger_<ms>": {rate: stats}}, the next unused message index).
    """
    from riskstream.streams.driver import Driver, batch_linger_s, tune_garbage_collector

    engine = Driver(settings)
    labels = LabelFeed(msgs)
    encoded = _EncodeOnly()
    times = msgs.columns["event_time"]
    most = settings.batch_max_events
    for a in range(max(0, start - warm), start, most):
        b = min(a + most, start)
        labels.feed_before(engine, int(times[a]))
        engine.process("transactions", msgs.values[a:b], [0] * (b - a), list(range(a, b)))
    tune_garbage_collector()
    out: dict[str, dict[str, dict]] = {}
    i0 = start
    for linger_ms in lingers_ms:
        batching = settings.model_copy(update={"batch_linger_ms": linger_ms})
        by_rate = out.setdefault(f"linger_{linger_ms}", {})
        for rate in rates:
            n = int(rate * seconds)
            if i0 + n > msgs.n:
                raise ValueError(f"not enough simulated messages for {rate}/s x {seconds}s")
            latency = np.empty(n)
            cost: list[float] = []  # seconds per batch
            t0 = time.perf_counter() + 0.01

            def arrived() -> int:  # transactions that have arrived by now
                return min(n, int((time.perf_counter() - t0) * rate) + 1)

            k = 0
            while k < n:
                first = t0 + k / rate
                now = time.perf_counter()
                if now < first:  # idle until the next transaction arrives
                    time.sleep(first - now)
                linger = batch_linger_s(arrived() - k, batching)  # as the worker's reader batches
                if linger:
                    time.sleep(linger)
                stop = min(arrived(), k + most)
                b0 = time.perf_counter()
                labels.feed_before(engine, int(times[i0 + k]))
                engine.run("transactions", msgs.values[i0 + k:i0 + stop], encoded, [0] * (stop - k),
                           list(range(i0 + k, i0 + stop)))
                done = time.perf_counter()
                cost.append(done - b0)
                latency[k:stop] = done - (t0 + np.arange(k, stop) / rate)
                k = stop
            busy = sum(cost) / (time.perf_counter() - t0)
            lat = _summary(latency * 1000.0, "p50", "p95", "p99", "max")
            batch = _summary(np.asarray(cost) * 1000.0, "p50", "p99", "max")
            by_rate[str(rate)] = {"transactions": n, "linger_ms": linger_ms, "batches": len(cost),
                                  "mean_batch": round(n / len(cost), 1), "busy_share": round(busy, 3),
                                  "batch_ms": batch, **lat}
            progress(f"  {rate:,}/s, linger {linger_ms} ms: p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f}, "
                     f"p99 {lat['p99']:.1f}, max {lat['max']:.1f}; {len(cost):,} batches of "
                     f"{n / len(cost):,.0f} on average, each {batch['p50']:.1f} ms (p99 {batch['p99']:.1f}, "
                     f"max {batch['max']:.1f}); engine busy {busy:.0%} of the time")
            i0 += n
    return out, i0


# ------------------------------------------------------------------------------------------
# 4. offline replay
# ------------------------------------------------------------------------------------------
class _EncodeOnly:
    """A publisher that takes the encoded outputs and drops them: what encoding costs, without
    a broker or ClickHouse."""

    publishes_topics = True
    takes_arrow_tables = False

    def send(self, stream, messages) -> None:
        pass

    def sink(self, table, rows) -> None:
        pass

    def sink_arrow(self, table, blocks, rows=0) -> None:
        pass

    def limits(self, limits) -> None:
        pass

    def dead_letters(self, dead) -> None:
        pass


def _offline_settings(base: Settings, data_dir: Path) -> Settings:
    from pydantic import SecretStr

    # A fixed key: the tokenizer then needs nothing from data_dir.
    return base.model_copy(update={"data_dir": data_dir, "pan_key": SecretStr("bench-" + "k" * 32)})


def warm_engine(settings: Settings, msgs: Messages) -> float:
    """Compile or load the numba kernels once, outside of any timed section."""
    from riskstream.schemas.events import TransactionBatch
    from riskstream.streams.driver import Driver

    t0 = time.perf_counter()
    Driver(settings).process_batch(TransactionBatch.from_columns(msgs.column_slice(0, min(500, msgs.n))))
    return time.perf_counter() - t0


class LabelFeed:
    """The bench's labels handed to an in-process driver in event time, as the worker
    does: before a batch, every label whose time is before the batch's first event."""

    def __init__(self, msgs: Messages):
        from riskstream.streams.reading import DueLabels

        self.labels = msgs.labels()
        self.due = DueLabels(self.labels.get("label_time", np.zeros(0, np.int64)))

    @property
    def fed(self) -> int:
        return self.due.handed

    def feed_before(self, driver, event_time_ms: int) -> int:
        from riskstream.streams.reading import label_rows

        due = self.due.before(event_time_ms)
        if len(due):
            driver.process_rows("labels", label_rows(self.labels, due))
        return len(due)


def offline_replay(settings: Settings, msgs: Messages, batch_size: int = 5000,
                   progress: Progress = _quiet) -> dict[str, Any]:
    """Driver.process_batch(TransactionBatch.from_columns(...)) + publish (encoding only), in process."""
    from riskstream.schemas.events import TransactionBatch
    from riskstream.streams.driver import Driver
    from riskstream.streams.outputs import publish

    engine = Driver(settings)
    encoded = _EncodeOnly()
    labels = LabelFeed(msgs)
    t_from = t_score = t_encode = t_labels = 0.0
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    last_print = t0
    decided = 0
    for a in range(0, msgs.n, batch_size):
        s_l = time.perf_counter()
        labels.feed_before(engine, int(msgs.columns["event_time"][a]))
        s0 = time.perf_counter()
        t_labels += s0 - s_l
        batch = TransactionBatch.from_columns(msgs.column_slice(a, a + batch_size))
        s1 = time.perf_counter()
        out = engine.process_batch(batch)
        s2 = time.perf_counter()
        publish(out, encoded)
        decided += out.decided
        s3 = time.perf_counter()
        t_from, t_score, t_encode = t_from + s1 - s0, t_score + s2 - s1, t_encode + s3 - s2
        if s3 - last_print >= 2.0:
            progress(f"  replayed {a + batch_size:,}/{msgs.n:,} ({(a + batch_size) / (s3 - t0):,.0f}/s)")
            last_print = s3
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    return {
        "path": "Driver.process_batch(TransactionBatch.from_columns) + publish, encoding only",
        "transactions": msgs.n, "decided": decided, "batch_size": batch_size, "seconds": round(wall, 3),
        "labels": labels.fed, "model_version_at_end": engine.transactions.version,
        "tps": round(msgs.n / wall, 1), "cpu_us_per_txn": round(cpu / msgs.n * 1e6, 2),
        "us_per_txn": {"labels": round(t_labels / msgs.n * 1e6, 2),
                       "from_columns": round(t_from / msgs.n * 1e6, 2),
                       "score_batch": round(t_score / msgs.n * 1e6, 2),
                       "encode_outputs": round(t_encode / msgs.n * 1e6, 2)},
    }


def offline_replay_module(settings: Settings, msgs: Messages, processes: int | None = None,
                          config: str | None = None) -> dict[str, Any]:
    """What ``riskstream replay FILE --stream transactions --offline`` runs, on the same
    transactions written to a Parquet file: read and validate (``load_input``), then
    ``replay_offline`` over ``processes`` processes (default: one per core but one), writing
    to chDB under ``settings.data_dir``.

    In a fresh interpreter, as the command runs, not in this process, which holds the bench's
    half a million serialised messages and their simulation. The simulator's labels go in as a
    second file (the command takes labels from a column). The child's progress lines go to
    this process's stderr. CPU counts the replay process and its children. ``config``: the
    settings file the bench was given (the child reads it too; ``settings`` supplies the data
    directory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from riskstream.streams.offline import default_processes

    processes = processes or default_processes()
    root = Path(settings.data_dir)
    root.mkdir(parents=True, exist_ok=True)
    path, labels_path = root / "bench-transactions.parquet", root / "bench-labels.parquet"
    pq.write_table(pa.table(dict(msgs.columns)), path)
    # The simulator's labels, interleaved by time as a label column's chargebacks would be.
    pq.write_table(pa.table(dict(msgs.labels())), labels_path)
    cmd = [sys.executable, "-m", "riskstream.bench.engine_bench", "offline", str(path), "--labels",
           str(labels_path), "--processes", str(processes), "--data-dir", str(settings.data_dir)]
    if config:
        cmd += ["--config", str(config)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"offline replay exited with {proc.returncode} (its error is printed above): "
                           + " ".join(cmd))
    res = orjson.loads(proc.stdout.strip().splitlines()[-1])
    res["path"] = (f"riskstream replay FILE.parquet --stream transactions --offline --processes {processes} "
                   "(streams.replay.load_input + replay_offline in a fresh process, with the simulator's "
                   "labels), chDB writer")
    res["decision_mix"] = decision_mix(settings)
    return res


def _offline_main(args: argparse.Namespace) -> int:
    """The child of :func:`offline_replay_module`: one JSON line on stdout."""
    import resource

    import pyarrow.parquet as pq

    from riskstream.settings import load_settings
    from riskstream.streams.offline import replay_offline
    from riskstream.streams.progress import Progress as ReplayProgress
    from riskstream.streams.reading import load_input

    settings = _offline_settings(load_settings(args.config), Path(args.data_dir))
    t0 = time.perf_counter()
    data = load_input(args.file, "transactions", settings=settings, validate=True)
    if args.labels:
        labels = pq.read_table(args.labels)
        data.labels = {k: labels.column(k).to_numpy(zero_copy_only=False) for k in labels.column_names}
    read_s = time.perf_counter() - t0

    def cpu_now() -> float:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    cpu0 = cpu_now()
    summary = replay_offline(data, settings, processes=args.processes,
                             progress=ReplayProgress(data.n, "transactions", out=sys.stderr))
    cpu = cpu_now() - cpu0
    print(orjson.dumps({
        "labels": summary.labels, "processes": args.processes, "transactions": summary.rows,
        "seconds": round(summary.seconds, 3), "tps": round(summary.rate, 1), "read_and_validate_s": round(read_s, 3),
        "tps_with_close": round(summary.rate_with_close, 1),  # tps runs to the last row in ClickHouse
        "cpu_us_per_txn": round(cpu / max(summary.rows, 1) * 1e6, 2),
        "profile_us_per_txn": {k: round(v / max(summary.rows, 1) * 1e6, 2) for k, v in summary.profile.items()},
        "rows_written": summary.rows_written,
    }).decode(), flush=True)
    return 0


def decision_mix(settings: Settings) -> dict[str, Any]:
    """What the replay decided (from its ``decisions`` rows), and how much of it the fraud
    model had a say in: the workload behind the figures (reasons and alerts cost per flagged
    transaction)."""
    from riskstream.sinks.clickhouse import open_client

    client = open_client(settings)
    try:
        rows = client.query("SELECT decision, count(), countIf(model_version LIKE 'fraud-warming-up%') "
                            "FROM decisions FINAL GROUP BY decision").result_rows
    finally:
        client.close()
    total = sum(r[1] for r in rows) or 1
    return {"share": {r[0]: round(r[1] / total, 4) for r in sorted(rows)},
            "model_ready_share": round(1 - sum(r[2] for r in rows) / total, 3)}


# ------------------------------------------------------------------------------------------
# 6. per-stage profile of the worker path
# ------------------------------------------------------------------------------------------
STAGES = ("labels", "decode", *SCORER_STAGES, "encode_and_produce", "flush")


def stage_profile(settings: Settings, msgs: Messages, batch_size: int = 5000, limit: int | None = None,
                  progress: Progress = _quiet) -> dict[str, Any]:
    """Where a transaction batch's time goes on the worker's path: the driver over the bench's
    messages, publishing to the real broker and Valkey. ``decode`` and the scorer's stages
    come from the driver and the scorer themselves (``TransactionScorer.stage_seconds``);
    ``encode_and_produce`` is the publish (topics, sink blocks, Redis limits); ``flush`` waits
    for the broker's acks, as the worker does before committing."""
    from riskstream.schemas.events import decode_transactions
    from riskstream.sinks.kafka import OutputPublisher, connect_redis
    from riskstream.streams.driver import Driver
    from riskstream.streams.outputs import publish

    driver = Driver(settings)
    scorer_seconds = driver.transactions.scorer.stage_seconds
    labels = LabelFeed(msgs)
    publisher = OutputPublisher(settings, redis_client=connect_redis(settings))
    total = {k: 0.0 for k in ("labels", "decode", "engine_other", "encode_and_produce", "flush")}
    n_total = 0
    stop = min(msgs.n, limit or msgs.n)
    values = msgs.values
    t_start = time.perf_counter()
    last_print = t_start
    for a in range(0, stop, batch_size):
        chunk = values[a:min(a + batch_size, stop)]
        n = len(chunk)
        t0 = time.perf_counter()
        labels.feed_before(driver, int(msgs.columns["event_time"][a]))
        t1 = time.perf_counter()
        batch, dead = decode_transactions(chunk, tokenizer=driver.tokenizer, topic=settings.topic("transactions"),
                                          partitions=[0] * n, offsets=list(range(a, a + n)),
                                          max_message_bytes=settings.max_message_bytes,
                                          max_amount=settings.max_amount)
        t2 = time.perf_counter()
        out = driver.process_batch(batch, dead, chunk)
        t3 = time.perf_counter()
        publish(out, publisher)
        t4 = time.perf_counter()
        publisher.flush()
        t5 = time.perf_counter()
        for stage, (x, y) in zip(total, ((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5))):
            total[stage] += y - x
        n_total += n
        if time.perf_counter() - last_print >= 2.0:
            progress(f"  profiled {n_total:,}/{stop:,} transactions")
            last_print = time.perf_counter()
    wall = time.perf_counter() - t_start
    # The driver's own time beside the scorer's stages (watermark, label clock, the batch retry guard).
    total["engine_other"] -= sum(scorer_seconds.values())
    total.update(scorer_seconds)
    us = {k: round(total[k] / n_total * 1e6, 3) for k in (*STAGES, "engine_other")}
    us["total"] = round(sum(total.values()) / n_total * 1e6, 3)
    return {"transactions": n_total, "batch_size": batch_size, "us_per_txn": us,
            "implied_tps": round(n_total / sum(total.values()), 1), "wall_s": round(wall, 2)}


# ------------------------------------------------------------------------------------------
# 5. memory at many cards (run in its own process)
# ------------------------------------------------------------------------------------------
def synthetic_batch(start: int, n: int, rng: np.random.Generator, t0_ms: int):
    """``n`` transactions of ``n`` new cards (ids start..start+n), the other entities pooled."""
    from riskstream.schemas.events import TRANSACTION_OPTIONAL, TransactionBatch

    def pool(prefix: str, size: int) -> np.ndarray:
        return np.array([f"{prefix}{i:08x}" for i in rng.integers(0, size, n)], dtype=object)

    optional = {k: np.full(n, "", dtype=object) for k in TRANSACTION_OPTIONAL}
    optional.update({
        "terminal_id": pool("T", 200_000), "customer_id": np.array([f"C{i:09d}" for i in range(start, start + n)], dtype=object),
        "device_id": pool("dev", 500_000), "ip": pool("ip", 300_000), "account_id": pool("acct", 500_000),
        "country": np.array(["FR", "DE", "NL", "BE", "PL"], dtype=object)[rng.integers(0, 5, n)],
        "channel": np.array(["pos", "ecom", "atm"], dtype=object)[rng.integers(0, 3, n)],
        "currency": np.full(n, "EUR", dtype=object), "mcc": np.full(n, "5411", dtype=object),
    })
    return TransactionBatch(
        transaction_id=np.array([f"m-{i}" for i in range(start, start + n)], dtype=object),
        event_time_ms=(t0_ms + np.arange(start, start + n, dtype=np.int64) * 50),
        card_id=np.array([f"card_{i:016x}" for i in range(start, start + n)], dtype=object),
        merchant_id=pool("M", 50_000),
        amount=np.round(rng.lognormal(3.5, 1.1, n), 2),
        lat=rng.uniform(45, 55, n), lon=rng.uniform(0, 15, n), optional=optional,
        partition=rng.integers(0, 4, n).astype(np.int32), offset=np.arange(start, start + n, dtype=np.int64),
    )


def memory_at_cards(cards: int, batch_size: int = 10_000, progress: Progress = _quiet) -> dict[str, Any]:
    from pydantic import SecretStr

    from riskstream.streams.driver import Driver

    settings = Settings(data_dir=Path("."), pan_key=SecretStr("bench-" + "k" * 32))
    rss0 = psutil.Process().memory_info().rss
    engine = Driver(settings)
    rng = np.random.default_rng(5)
    t0_ms = int(time.time() * 1000) - cards * 50
    t0 = time.perf_counter()
    last_print = t0
    for a in range(0, cards, batch_size):
        engine.process_batch(synthetic_batch(a, min(batch_size, cards - a), rng, t0_ms))
        if time.perf_counter() - last_print >= 2.0:
            progress(f"  fed {a + batch_size:,}/{cards:,} cards ({(a + batch_size) / (time.perf_counter() - t0):,.0f}/s)")
            last_print = time.perf_counter()
    tracked = engine.features.tracked_entities
    feature_bytes = engine.features.state_bytes()
    models = engine.transactions.models
    model_bytes = models.state_bytes() if models is not None and hasattr(models, "state_bytes") else 0
    n_cards = tracked.get("card", cards)
    return {
        "cards": cards, "tracked_entities": tracked, "feature_state_bytes": feature_bytes,
        "state_bytes_per_card": round(feature_bytes / max(n_cards, 1), 1),
        "model_state_bytes": model_bytes, "model_state_note": "ring of decisions awaiting labels: sized by capacity, not cards",
        "peak_rss_mb": round(peak_rss_mb(), 1), "rss_before_engine_mb": round(rss0 / 2**20, 1),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def memory_in_subprocess(cards: int, group: ProcessGroup, progress: Progress = _quiet) -> dict[str, Any]:
    """Run :func:`memory_at_cards` in a fresh interpreter: its peak RSS is the engine's alone."""
    from riskstream.stack import _die_with_parent

    proc = group.add(subprocess.Popen([sys.executable, "-m", "riskstream.bench.engine_bench", "memory",
                                       "--cards", str(cards)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent, text=True))

    def relay() -> None:  # the child's progress lines, as they come
        for line in proc.stderr:
            progress(line.rstrip())

    t = threading.Thread(target=relay, daemon=True, name="memory-progress")
    t.start()
    out = proc.stdout.read()
    proc.wait()
    t.join(2)
    group.procs.remove(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"memory bench exited with {proc.returncode}")
    return orjson.loads(out.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Entry point for the helper processes (``faust-counter``, ``memory``, ``offline``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "faust-counter":
        return _faust_counter_main(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m riskstream.bench.engine_bench")
    sub = ap.add_subparsers(dest="cmd", required=True)
    mem = sub.add_parser("memory", help="state bytes per card and peak RSS at N distinct cards")
    mem.add_argument("--cards", type=int, default=1_000_000)
    off = sub.add_parser("offline", help="an offline replay of FILE in this fresh process (offline_replay_module)")
    off.add_argument("file")
    off.add_argument("--labels", default="")
    off.add_argument("--processes", type=int, default=1)
    off.add_argument("--data-dir", required=True)
    off.add_argument("--config", default=None)
    args = ap.parse_args(argv)
    if args.cmd == "offline":
        return _offline_main(args)
    if args.cmd == "memory":
        res = memory_at_cards(args.cards, progress=lambda s: print(s, file=sys.stderr, flush=True))
        print(orjson.dumps(res).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
