"""Backtest history from ClickHouse: the stored transactions, their features as the worker had
them at decision time, and whether each turned out to be fraud.

ClickHouse keeps the scored transactions but not their features (about 50 float columns per
row would multiply the table's size). The features are rebuilt instead: the stored
``transactions`` of the period, preceded by a warm-up period, go in event-time order through
a fresh :class:`~riskstream.detectors.features.FeatureEngine`, the same code the worker runs,
with the confirmed frauds folded in from their label time on, as the worker folds in the
labels it consumes. ``score`` is the stored model score (Float32 in ClickHouse, as the
worker computed it); the models are not replayed.

What can differ from what the worker really saw
-----------------------------------------------
* State older than the warm-up: entity state starts empty ``warmup_days`` before the period.
  Windows of 7 days or less are settled after a 30-day warm-up (a 7d-decayed event from 30
  days back weighs 1.4%); 30-day aggregates and fraud rates still miss ~37% of their weight,
  and an entity last seen before the warm-up reads as first seen. Lengthen ``--warmup-days``
  when rules lean on those.
* Worker restarts: a live worker loses up to one snapshot interval of feature updates on a
  crash; the rebuild never does.
* Labels: one per (transaction, label) as ClickHouse keeps it (FINAL), each visible from its
  ``label_time``; a live worker learns a label when it consumes it, which is normally soon
  after that time.

Fraud, for precision and recall, is any transaction with a positive label in ``labels``,
whenever the label arrived (also after ``--to``): a backtest asks whether the rule caught
what turned out to be fraud. Recent periods therefore look better than they will once their
chargebacks are in.

>>> from datetime import date
>>> from riskstream.settings import Settings
>>> columns, is_fraud, day = load_backtest_history(
...     Settings(data_dir="/tmp/rs-doc-history"), date(2024, 6, 1), date(2024, 6, 2), warmup_days=0)
>>> len(is_fraud)
0
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable, TextIO

import numpy as np

from riskstream.schemas.events import DAY_MS, HOUR_MS
from riskstream.schemas.registry import STREAMS
from riskstream.settings import Settings
from riskstream.streams.pipeline import rule_columns

WARMUP_DAYS = 30
# Rows per ClickHouse read and per FeatureEngine call: ~100 MB of Arrow and features at most;
# each read costs a fixed query overhead, so much smaller chunks would make that dominate.
CHUNK_ROWS = 100_000
# The transaction's text columns as the worker decodes them (the stream registry); "score"
# comes from the stored row.
_TEXT_COLUMNS = STREAMS["transactions"].strings


@dataclass
class BacktestHistory:
    """The period's transactions in event-time order, as the rules saw them."""

    columns: dict[str, np.ndarray]  # exactly the worker's rule columns (transaction_rule_columns())
    transaction_id: np.ndarray
    event_time_ms: np.ndarray
    is_fraud: np.ndarray
    event_day: np.ndarray  # UTC day, datetime64[D]
    warmup_rows: int = 0
    labels_applied: int = 0  # fraud labels folded into the features
    seconds: float = 0.0

    @property
    def n(self) -> int:
        return len(self.is_fraud)


def _ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp() * 1000)


def _ch_time(ms: int) -> str:
    # Millisecond literal, so the comparison is exact whatever the server's time zone.
    return f"fromUnixTimestamp64Milli(toInt64({int(ms)}), 'UTC')"


def arrow_reader(settings: Settings) -> Callable[[str], Any]:
    """``sql -> pyarrow.Table`` wherever the data is, routed like
    :func:`riskstream.sinks.clickhouse.run_query`: through the running sink's query endpoint
    when it owns the chDB path (only one process may open it), else one client opened once
    (run_query would open one and re-check the schema per chunk)."""
    import pyarrow as pa

    from riskstream.sinks.clickhouse import ensure_schema, open_client, run_query

    def table(blob: bytes) -> Any:
        return pa.ipc.open_stream(blob).read_all()

    if not settings.clickhouse_dsn.get_secret_value():
        from riskstream.stack import running_stack

        if running_stack(settings).get("sink_query"):
            return lambda sql: table(run_query(settings, sql, "ArrowStream"))
    client = open_client(settings)
    ensure_schema(client)  # a fresh data dir then reads as empty, not as a missing table
    return lambda sql: table(client.raw_query(sql, fmt="ArrowStream"))


def _chunks(hours: np.ndarray, counts: np.ndarray, boundary_ms: int, chunk_rows: int) -> list[tuple[int, int, int]]:
    """(start_ms, end_ms, rows) read ranges: whole hours, about ``chunk_rows`` each, never
    straddling the period start (warm-up chunks are computed and dropped)."""
    out: list[tuple[int, int, int]] = []
    start, rows = None, 0
    for hour, n in zip(hours.tolist(), counts.tolist()):
        if start is not None and (rows + n > chunk_rows or (start < boundary_ms <= hour)):
            out.append((start, hour, rows))
            start, rows = None, 0
        if start is None:
            start = hour
        rows += n
    if start is not None:
        out.append((start, int(hours[-1]) + HOUR_MS, rows))
    return out


class _Progress:
    """One stderr line about once a second while a load runs."""

    def __init__(self, total: int, period_start_ms: int, out: TextIO | None, every_s: float = 1.0):
        self.total, self.period_start_ms, self.out, self.every_s = total, period_start_ms, out, every_s
        self.t0 = self.last = time.perf_counter()

    def update(self, done: int, chunk_start_ms: int) -> None:
        now = time.perf_counter()
        if now - self.last < self.every_s and done < self.total:
            return
        self.last = now
        phase = "warm-up" if chunk_start_ms < self.period_start_ms else "period"
        print(f"backtest [{now - self.t0:6.1f}s] {done:>11,}/{self.total:,} transactions "
              f"({100.0 * done / max(self.total, 1):5.1f}%, {phase}) {done / max(now - self.t0, 1e-9):>9,.0f}/s",
              file=self.out or sys.stderr, flush=True)


def load_backtest_history(settings: Settings, date_from: date, date_to: date, *, warmup_days: int = WARMUP_DAYS,
                          chunk_rows: int = CHUNK_ROWS, progress: TextIO | None = None,
                          ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """(columns, is_fraud, event_day) for ``riskstream rules backtest``: see :func:`rebuild_history`."""
    history = rebuild_history(settings, date_from, date_to, warmup_days=warmup_days, chunk_rows=chunk_rows,
                              progress=progress)
    return history.columns, history.is_fraud, history.event_day


def rebuild_history(settings: Settings, date_from: date, date_to: date, *, warmup_days: int = WARMUP_DAYS,
                    chunk_rows: int = CHUNK_ROWS, progress: TextIO | None = None) -> BacktestHistory:
    """The transactions with ``date_from <= event_time < date_to`` (UTC days), in event-time
    order, with the features they had at decision time.

    ``columns`` are what the worker's rules see, no more (a rule the backtest accepts must
    compile on the worker): every feature of
    :data:`~riskstream.detectors.features.FEATURE_NAMES` (float32), ``score`` (float32),
    ``card_id``, ``merchant_id`` and the optional transaction fields. An empty period returns
    empty arrays and reads no warm-up."""
    from riskstream.detectors.features import FeatureEngine
    from riskstream.schemas.transactions import TransactionBatch

    if date_to <= date_from:
        raise SystemExit(f"riskstream rules backtest: --to {date_to} must be after --from {date_from} "
                         "(--to is the day after the last day).")
    if warmup_days < 0:
        raise SystemExit(f"riskstream rules backtest: --warmup-days {warmup_days}: expected 0 or more.")
    t0 = time.perf_counter()
    period_start, period_end = _ms(date_from), _ms(date_to)
    warmup_start = _ms(date_from - timedelta(days=warmup_days))
    read = arrow_reader(settings)
    in_range = (f"event_time >= {_ch_time(warmup_start)} AND event_time < {_ch_time(period_end)}")

    hourly = read(f"SELECT toInt64(toUnixTimestamp(toStartOfHour(event_time))) * 1000 AS hour_ms, count() AS n "
                  f"FROM transactions FINAL WHERE {in_range} GROUP BY hour_ms ORDER BY hour_ms")
    hours = hourly.column("hour_ms").to_numpy().astype(np.int64)
    counts = hourly.column("n").to_numpy().astype(np.int64)
    period_rows = int(counts[hours >= period_start].sum())
    warmup_rows = int(counts[hours < period_start].sum())
    if period_rows == 0:
        return BacktestHistory({}, np.zeros(0, dtype=object), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool),
                               np.zeros(0, dtype="datetime64[D]"), seconds=time.perf_counter() - t0)

    # Confirmed frauds as the worker learns them (streams.processors.TransactionProcessor.labels_arrived): for the
    # label's card (entity_id), merchant and terminal, from label_time on. Only those due
    # before the period ends matter.
    label_rows = read(
        "SELECT entity_id, merchant_id, terminal_id, toUnixTimestamp64Milli(event_time) AS labelled_event_ms, "
        "toUnixTimestamp64Milli(label_time) AS label_time_ms FROM labels FINAL "
        f"WHERE stream = 'transactions' AND is_positive = 1 AND label_time >= {_ch_time(warmup_start)} "
        f"AND label_time < {_ch_time(period_end)} ORDER BY label_time_ms")
    label_keys = {entity: label_rows.column(column).to_numpy(zero_copy_only=False).astype(object)
                  for entity, column in (("card", "entity_id"), ("merchant", "merchant_id"),
                                         ("terminal", "terminal_id"))}
    label_event_ms = label_rows.column("labelled_event_ms").to_numpy().astype(np.int64)
    label_ms = label_rows.column("label_time_ms").to_numpy().astype(np.int64)
    next_label = 0

    engine = FeatureEngine()
    # Not "AS event_time": ClickHouse would substitute the alias into the WHERE clause.
    select = ", ".join(["toUnixTimestamp64Milli(event_time) AS event_time_ms", "amount", "lat", "lon", "score",
                        *_TEXT_COLUMNS])
    total = period_rows + warmup_rows
    bar = _Progress(total, period_start, progress)
    parts: list[dict[str, np.ndarray]] = []
    ids: list[np.ndarray] = []
    times: list[np.ndarray] = []
    done = 0
    for lo, hi, _ in _chunks(hours, counts, period_start, chunk_rows):
        # Ties in event time: Kafka order within a partition is the order the worker saw.
        table = read(f"SELECT {select} FROM transactions FINAL WHERE event_time >= {_ch_time(lo)} "
                     f"AND event_time < {_ch_time(hi)} ORDER BY event_time, partition, offset, transaction_id")
        if table.num_rows == 0:
            continue
        cols = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
        cols["event_time"] = cols.pop("event_time_ms")
        for name in _TEXT_COLUMNS:
            cols[name] = cols[name].astype(object, copy=False)
        batch = TransactionBatch.from_columns(cols)
        due = int(np.searchsorted(label_ms, int(batch.event_time_ms[-1]), side="right"))
        if due > next_label:
            # The engine folds each one in just before the first row at or after its label time.
            engine.apply_labels({entity: keys[next_label:due] for entity, keys in label_keys.items()},
                                label_event_ms[next_label:due], label_ms[next_label:due],
                                np.ones(due - next_label, dtype=np.int8))
            next_label = due
        features = engine.compute(batch)
        if lo >= period_start:
            # What the worker's rules see, built by the worker's own function.
            parts.append(rule_columns(batch, features, cols["score"].astype(np.float32, copy=False)))
            ids.append(batch.transaction_id)
            times.append(batch.event_time_ms)
        done += table.num_rows
        bar.update(done, lo)

    columns = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    transaction_id = np.concatenate(ids)
    event_time_ms = np.concatenate(times)
    fraud_ids = read(
        "SELECT DISTINCT event_id FROM labels FINAL WHERE stream = 'transactions' AND is_positive = 1 "
        "AND event_id IN (SELECT transaction_id FROM transactions "
        f"WHERE event_time >= {_ch_time(period_start)} AND event_time < {_ch_time(period_end)})"
    ).column("event_id").to_pylist()
    is_fraud = np.fromiter(map(frozenset(fraud_ids).__contains__, transaction_id.tolist()), dtype=bool,
                           count=len(transaction_id))
    history = BacktestHistory(columns, transaction_id, event_time_ms, is_fraud,
                              (event_time_ms // DAY_MS).astype("datetime64[D]"), warmup_rows=warmup_rows,
                              labels_applied=next_label, seconds=time.perf_counter() - t0)
    print(f"backtest: rebuilt the features of {history.n:,} transactions ({warmup_rows:,} more in the "
          f"{warmup_days}-day warm-up, {next_label:,} fraud labels folded in) in {history.seconds:.1f}s; "
          f"{int(is_fraud.sum()):,} of them are labelled fraud", file=progress or sys.stderr)
    return history


__all__ = ["load_backtest_history", "rebuild_history", "arrow_reader", "BacktestHistory", "WARMUP_DAYS"]
