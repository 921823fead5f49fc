"""`riskstream chaos`: the demo's streams through workers that are killed, with Valkey and the
sink frozen on the way, and then the accounting of what came out.

Every input stream of the demo goes in (card payments, labels, loan applications, account
events, market ticks and positions, and malformed records). While it flows:

- a worker is SIGKILLed at random moments (``--kills``) and started again after a moment, so
  its partitions move to the other worker (``--workers``, 2 by default) and back;
- with ``--outages``, Valkey is frozen (SIGSTOP) for ``--valkey-seconds``, and later the
  ClickHouse sink for ``--sink-seconds``, then let go (SIGCONT).

Afterwards, per stream: events in, distinct events decided (or stored) in ClickHouse, events
with a decision message on the ``decisions`` topic, rows folded twice in ``FINAL`` (must be 0),
repeated decision messages (allowed: at least once) and whether a repeat ever changed the
decision. ``lost`` must be 0 everywhere; the exit code says whether it was.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

import orjson

from riskstream.demo import build_stream, start_worker
from riskstream.settings import Settings
from riskstream.stack import EmbeddedStack, stop_process


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Faults:
    kills: int = 0
    restarts: int = 0
    outages: list[tuple[str, float]] = field(default_factory=list)  # (what, seconds frozen)
    frozen: list[tuple[str, float, float]] = field(default_factory=list)  # (what, from, to) epoch s

    def valkey_frozen_at(self, t: float) -> bool:
        return any(what == "valkey" and start <= t <= end for what, start, end in self.frozen)


class Workers:
    """The worker processes, each slot restarted after a kill."""

    def __init__(self, settings: Settings, state: dict, n: int):
        self.settings, self.state = settings, state
        self.procs = [start_worker(settings, state, i) for i in range(n)]
        self.lock = threading.Lock()

    def kill_one(self, rng: random.Random, faults: Faults) -> None:
        with self.lock:
            i = rng.randrange(len(self.procs))
            victim = self.procs[i]
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            faults.kills += 1
        _say(f"  SIGKILL worker-{i} (pid {victim.pid}, kill {faults.kills})")
        time.sleep(rng.uniform(0.2, 2.0))  # its partitions go to the others meanwhile
        with self.lock:
            self.procs[i] = start_worker(self.settings, self.state, i)
            faults.restarts += 1
        _say(f"  worker-{i} started again (pid {self.procs[i].pid})")

    def stop(self) -> None:
        for p in self.procs:
            stop_process(p, 10)


def freeze(pid: int, seconds: float, what: str, faults: Faults, stop: threading.Event) -> None:
    _say(f"  SIGSTOP {what} (pid {pid}) for {seconds:.0f}s")
    start = time.time()
    os.kill(pid, signal.SIGSTOP)
    try:
        stop.wait(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)
    faults.outages.append((what, seconds))
    faults.frozen.append((what, start, time.time()))


def run_chaos(settings: Settings, events: int, kills: int, workers: int = 2, rate: float = 4000.0,
              outages: bool = False, valkey_seconds: float = 30.0, sink_seconds: float = 60.0,
              seed: int = 11) -> int:
    rng = random.Random(seed)
    stream = build_stream(events, progress=_say)
    messages = stream.messages
    seconds = len(messages) / rate
    _say(f"chaos: {len(messages):,} messages ({stream.transactions:,} transactions) at {rate:,.0f}/s (~{seconds:.0f}s), "
         f"{workers} worker(s), {kills} kill(s){', Valkey and sink frozen' if outages else ''}")
    stack = EmbeddedStack(settings)
    stack.start(progress=lambda s: _say(f"  {s}"))
    faults = Faults()
    stop = threading.Event()
    chaos_threads: list[threading.Thread] = []
    try:
        state = settings.stack_state()
        client = settings.model_copy(update={"kafka_bootstrap": state["kafka"]})
        pool = Workers(settings, state, workers)
        # Faults at random moments of the feed, the first after the workers have joined.
        plan = sorted(rng.uniform(0.1, 0.9) * seconds + 5 for _ in range(kills))
        schedule = [(t, lambda: pool.kill_one(rng, faults)) for t in plan]
        freezes = []
        if outages:
            pids = state["pids"]
            freezes = [lambda: freeze(pids["valkey"], valkey_seconds, "valkey", faults, stop),
                       lambda: freeze(pids["sink"], sink_seconds, "sink", faults, stop)]
            schedule += [(0.3 * seconds + 5, freezes[0]), (0.6 * seconds + 5, freezes[1])]
        t0 = time.monotonic()
        feed = threading.Thread(target=produce_paced, args=(client, messages, rate, t0), daemon=True)
        feed.start()
        # Workers are started again from this thread: a child's parent-death signal fires when
        # the thread that forked it ends, so a short-lived thread would take its worker along.
        for at, action in sorted(schedule, key=lambda e: e[0]):
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            th = threading.Thread(target=action, daemon=True) if action in freezes else None
            if th is not None:
                th.start()
                chaos_threads.append(th)
            else:
                action()
        feed.join()
        for th in chaos_threads:
            th.join()
        _say("feed done and faults over; waiting for the workers and the sink to catch up ...")
        wait_caught_up(client, settings, stream)
        report = account(client, settings, stream, faults)
        pool.stop()
    finally:
        stop.set()
        stack.stop()
    return print_report(report, faults, stream, time.monotonic() - t0, settings)


def produce_paced(settings: Settings, messages: list[tuple[str, bytes, bytes]], rate: float, t0: float) -> None:
    from confluent_kafka import Producer

    producer = Producer({**settings.kafka_client_config(), "linger.ms": 5, "compression.type": "lz4",
                         "queue.buffering.max.messages": 2_000_000})
    last = t0
    for n, (topic, key, value) in enumerate(messages):
        if n % 500 == 0:
            ahead = t0 + n / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            if time.monotonic() - last >= 5:
                _say(f"[{time.monotonic() - t0:6.1f}s] produced {n:,}/{len(messages):,}")
                last = time.monotonic()
        while True:
            try:
                producer.produce(settings.topic(topic), key=key, value=value)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("the broker did not take every message of the feed")


def group_lag(settings: Settings) -> int:
    """Input messages the workers have not committed yet (a batch is committed once all its
    outputs are acknowledged, so zero lag means every output is on its topic)."""
    from confluent_kafka import Consumer, TopicPartition

    from riskstream.schemas.registry import STREAMS

    consumer = Consumer({**settings.kafka_client_config(), "group.id": settings.consumer_group,
                         "enable.auto.commit": False})
    try:
        parts = []
        for name in STREAMS:
            topic = settings.topic(name)
            meta = consumer.list_topics(topic, timeout=10).topics[topic]
            parts += [TopicPartition(topic, p) for p in meta.partitions]
        lag = 0
        for tp in consumer.committed(parts, timeout=10):
            end = consumer.get_watermark_offsets(tp, timeout=10)[1]
            lag += max(0, end - max(tp.offset, 0))  # Tansu can report a commit past its high watermark
        return lag
    finally:
        consumer.close()


def wait_caught_up(client: Settings, settings: Settings, stream, quiet_s: float = 60.0, timeout: float = 900.0) -> None:
    """Until the workers have committed every input message and every table holds as many
    distinct rows as went in, or nothing has moved for ``quiet_s`` (then the accounting shows
    what is missing)."""
    from riskstream.sinks.clickhouse import run_query

    expected = input_keys(stream)
    expected["transactions"], expected["loan_applications"] = stream.transactions, stream.loan_applications
    want = sum(expected.values())
    sql = " + ".join(f"(SELECT uniqExact({', '.join(key)}) FROM {table} WHERE {where})"
                     for table, key, where in TABLES.values())
    deadline, last, moved_at = time.monotonic() + timeout, None, time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - moved_at < quiet_s:
        stored = int(run_query(settings, f"SELECT {sql}", "tsv").split()[-1])
        lag = group_lag(client)
        if (stored, lag) != last:
            _say(f"  stored {stored:,}/{want:,} distinct rows; {lag:,} input messages not committed")
            last, moved_at = (stored, lag), time.monotonic()
        if stored >= want and lag == 0:
            return
        time.sleep(1)


# Per stream: its table, the columns that make one stored row, and whether it is decided.
TABLES = {
    "transactions": ("decisions", ("event_id",), "stream = 'transactions'"),
    "loan_applications": ("decisions", ("event_id",), "stream = 'loan_applications'"),
    "labels": ("labels", ("stream", "event_id", "label"), "1"),
    "account_events": ("account_events", ("account_id", "event_id", "kind"), "1"),
    "market": ("market_ticks", ("instrument", "event_time"), "1"),
    "positions": ("positions", ("portfolio_id", "instrument", "event_time"), "1"),
}
ID_COLUMN = {"transactions": "transaction_id", "loan_applications": "application_id"}


def input_keys(stream) -> dict[str, int]:
    """Distinct rows each table should hold, counted from the messages fed."""
    keys: dict[str, set] = {name: set() for name in TABLES}
    for topic, _, value in stream.messages:
        if topic not in TABLES:
            continue
        try:
            rec = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue  # a malformed record: a dead letter
        if not isinstance(rec, dict):
            continue
        cols = (ID_COLUMN[topic],) if topic in ID_COLUMN else TABLES[topic][1]
        keys[topic].add(tuple(rec.get(c) for c in cols))
    return {name: len(k) for name, k in keys.items()}


def input_ids(stream) -> dict[str, set[str]]:
    """The ids of the events that must be decided, per decided stream."""
    ids: dict[str, set[str]] = {name: set() for name in ID_COLUMN}
    for topic, key, value in stream.messages:
        if topic in ID_COLUMN and not key.startswith(b"bad-"):  # build_stream keys its malformed records so
            try:
                rec = orjson.loads(value)
            except orjson.JSONDecodeError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get(ID_COLUMN[topic]), str):
                ids[topic].add(rec[ID_COLUMN[topic]])
    return ids


def account(client: Settings, settings: Settings, stream, faults: Faults) -> dict[str, dict[str, int]]:
    """Per stream: distinct events in, distinct rows in ClickHouse, lost, and the repeats
    written and folded; for decided streams also the decision messages on the topic."""
    from riskstream.sinks.clickhouse import run_query

    def one(sql: str) -> dict:
        return orjson.loads(run_query(settings, sql, "json").splitlines()[0])

    expected = input_keys(stream)
    expected["transactions"], expected["loan_applications"] = stream.transactions, stream.loan_applications
    on_topic = decisions_on_topic(client)
    all_ids = input_ids(stream)
    report: dict[str, dict[str, int]] = {}
    for name, (table, key, where) in TABLES.items():
        got = one(f"SELECT uniqExact({', '.join(key)}) AS distinct, count() AS rows FROM {table} WHERE {where}")
        n, distinct = expected[name], int(got["distinct"])
        report[name] = {"events": n, "stored": distinct, "lost": max(0, n - distinct),
                        "repeats_folded": int(got["rows"]) - distinct}
        if name in ID_COLUMN:
            seen = on_topic.get(name, {})
            missing = sorted(all_ids[name] - set(seen))
            if missing:
                _say(f"  {name}: no decision message for {len(missing):,} event(s), e.g. {', '.join(missing[:5])}")
            report[name].update(on_topic=len(seen), lost_on_topic=max(0, n - len(seen)),
                                repeated_messages=sum(c for c, _, _ in seen.values()) - len(seen),
                                repeats_changed=sum(1 for _, changed, _ in seen.values() if changed),
                                # Decided first while Valkey, which holds the decision memory, was
                                # frozen: a worker killed then took that memory with it.
                                changed_in_outage=sum(1 for _, changed, at in seen.values()
                                                      if changed and faults.valkey_frozen_at(at)))
    dead = one("SELECT uniqExact(topic, partition, offset) AS n FROM dead_letters")
    report["malformed"] = {"events": stream.malformed, "stored": int(dead["n"]),
                           "lost": max(0, stream.malformed - int(dead["n"])), "repeats_folded": 0}
    return report


def decisions_on_topic(settings: Settings) -> dict[str, dict[str, tuple[int, bool, float]]]:
    """Per stream, per event id: how many decision messages, whether any disagreed, and when
    the first was decided (epoch seconds)."""
    from confluent_kafka import TopicPartition

    from riskstream.bench.broker_runs import decisions_consumer

    consumer = decisions_consumer(settings, from_end=False)
    topic = settings.topic("decisions")
    ends = {tp.partition: consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)[1]
            for tp in consumer.assignment()}
    first: dict[str, dict[str, str]] = {}
    seen: dict[str, dict[str, tuple[int, bool, float]]] = {}
    left = {p for p, end in ends.items() if end > 0}
    # To the high watermarks, and on until the topic has been quiet for a while: Tansu can
    # report a high watermark below its last message.
    quiet_since = time.monotonic()
    while left or time.monotonic() - quiet_since < 3.0:
        got = consumer.consume(10000, timeout=0.5)
        if got:
            quiet_since = time.monotonic()
        for m in got:
            if m.error():
                continue
            d = orjson.loads(m.value())
            stream, event = d["stream"], d["event_id"]
            decided = first.setdefault(stream, {}).setdefault(event, d["decision"])
            count, changed, at = seen.setdefault(stream, {}).get(event, (0, False, float(d["decided_at"])))
            seen[stream][event] = (count + 1, changed or decided != d["decision"], at)
            if m.offset() + 1 >= ends[m.partition()]:
                left.discard(m.partition())
        if not got and time.monotonic() - quiet_since > 30:
            break  # the watermark said more, and nothing came for 30 s
    consumer.close()
    return seen


def print_report(report: dict, faults: Faults, stream, elapsed: float, settings: Settings) -> int:
    lost = sum(r["lost"] + r.get("lost_on_topic", 0) for r in report.values())
    changed = sum(r.get("repeats_changed", 0) for r in report.values())
    print(f"\nriskstream chaos: {sum(r['events'] for r in report.values()):,} events in {elapsed:.0f}s; "
          f"{faults.kills} worker kill(s) survived ({faults.restarts} restarts)"
          + "".join(f", {what} frozen {s:.0f}s" for what, s in faults.outages))
    print(f"{'stream':<18} {'events':>9} {'in ClickHouse':>13} {'lost':>5} {'repeats folded':>14} "
          f"{'on topic':>9} {'repeated msgs':>13} {'repeat changed':>14}")
    for name, r in report.items():
        print(f"{name:<18} {r['events']:>9,} {r['stored']:>13,} {r['lost']:>5,} {r['repeats_folded']:>14,} "
              + (f"{r['on_topic']:>9,} {r['repeated_messages']:>13,} {r['repeats_changed']:>14,}"
                 if "on_topic" in r else f"{'-':>9} {'-':>13} {'-':>14}"))
    in_outage = sum(r.get("changed_in_outage", 0) for r in report.values())
    ok = lost == 0 and changed == in_outage
    print(f"lost: {lost}; repeated decisions that changed: {changed}"
          + (f", of which {in_outage} first decided while Valkey, which holds the decision memory, was "
             "frozen: a worker that died or took over partitions then could not share what was decided "
             "(docs/reliability.md)"
             if in_outage else "") + ". "
          + ("Nothing lost." if ok else f"FAILED: see the worker logs in {settings.data_dir.resolve() / 'logs'}"))
    print("Next: docs/operations.md (the guarantees, and how they were measured)")
    return 0 if ok else 1
