"""The bench's workload: simulated transactions and labels, serialised once as the messages
every run sends (keyed by card), and their preload into a topic."""

from __future__ import annotations
import gc
import time
from dataclasses import dataclass
import numpy as np
import orjson
from riskstream.settings import Settings
from riskstream.schemas.events import DAY_MS
from riskstream.bench.harness import Progress, quiet


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


def build_messages(n: int, seed: int = 11, progress: Progress = quiet, extra: int = 0) -> Messages:
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


def preload(settings: Settings, msgs: Messages, start: int = 0, stop: int | None = None,
            progress: Progress = quiet) -> float:
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
