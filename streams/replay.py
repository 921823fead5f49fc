"""`riskstream replay FILE --stream NAME`: a recorded or simulated stream, in event-time order.

Online (default) every row becomes a JSON message on the stream's topic, keyed like live
producers key it, so the running workers decide it exactly as they would live traffic.
``--offline`` needs no broker: the same :class:`~riskstream.streams.engine.Engine` runs
in-process over chunks of ``batch_max_events`` rows and the results go to ClickHouse in
large blocks (through the running sink when the embedded stack is up, else chDB directly).

Labels from a ground-truth column (``--label-column is_fraud --label-delay 7d``) become
``chargeback`` label events at ``event_time + delay`` and are interleaved with the events
by time, so nothing learns an outcome before the bank would have known it. Offline, a label
is learned before the first chunk that starts after its ``label_time``: never early, at most
one chunk late.

``--offline --processes N`` (default: one per core) splits a transactions file by card over N
forked processes, the way a topic's partitions split traffic over N online workers: each
process scores its cards, in event-time order with their labels, with its own engine, and
hands its encoded output back to this process, the only one that writes ClickHouse.

Example (offline, on a simulated file)::

    riskstream simulate --days 7 --out /tmp/tx.parquet
    riskstream replay /tmp/tx.parquet --stream transactions --label-column is_fraud \\
        --label-delay 7d --offline
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import signal
import sys
import threading
import time
import traceback
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import orjson

from riskstream.schemas.events import (
    TRANSACTION_OPTIONAL, DeadLetter, TransactionBatch, constant_column, id_or, tokenize_pans, transaction_checks,
)
from riskstream.sinks.clickhouse import ARROW_INSERT_SETTINGS, arrow_tables, combine_blocks, concat_arrow_tables
from riskstream.settings import Settings, load_settings

DURATION_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
# Rows per ClickHouse insert (per table). Bigger inserts write fewer parts, and chDB's
# background merges of parts were 40% of its CPU at 20k-row inserts (measured with merges
# stopped: 4.1 -> 2.5 us per transaction's two rows). Measured on a 300k replay, alternating
# with the 20k-row writer eight times: median 119.6k tx/s against 113.8k, ~10% less user CPU.
# An earlier measurement saw 200k-row buffers fault in fresh pages for every block (sys time
# > user time).
INSERT_ROWS = 50_000
# The parent of a multi-process replay only writes, so the page faults above do not slow
# scoring, and chDB spends less per row on bigger inserts: 5.3 us -> 3.7 us a transaction
# (decisions + transactions) from 20k- to 100k-row inserts, measured.
SHARDED_INSERT_ROWS = 100_000
TAIL_INSERT_ROWS = 5_000
WRITER_SWITCH_INTERVAL_S = 0.001  # see replay_offline
TRUTHY_STRINGS = frozenset({"1", "true", "t", "yes", "y"})


class ReplayError(Exception):
    """A problem with the command line or the file; the message says what to do."""


@dataclass(frozen=True)
class StreamSpec:
    """What a stream's rows must carry. ``required`` groups: one column of each group."""

    time_column: str
    required: tuple[tuple[str, ...], ...]
    key: tuple[str, ...]  # message key column (first one present), as live producers key it
    strings: tuple[str, ...] = ()  # read as text from CSV (ids like mcc "0742" keep their zeros)


STREAMS: dict[str, StreamSpec] = {
    "transactions": StreamSpec(
        "event_time",
        (("transaction_id",), ("event_time",), ("amount",), ("card_id", "customer_id"),
         ("merchant_id", "terminal_id")),
        ("card_id", "customer_id"),
        ("transaction_id", "card_id", "merchant_id", *TRANSACTION_OPTIONAL),
    ),
    "market": StreamSpec("event_time", (("instrument",), ("event_time",), ("price",)), ("instrument",),
                         ("instrument",)),
    "positions": StreamSpec("event_time", (("portfolio_id",), ("instrument",), ("event_time",), ("quantity",)),
                            ("portfolio_id",), ("portfolio_id", "instrument")),
    "loan_applications": StreamSpec(
        "event_time",
        (("application_id",), ("event_time",), ("customer_id",), ("amount",), ("income",), ("term_months",)),
        ("customer_id",), ("application_id", "customer_id")),
    "labels": StreamSpec("label_time", (("event_id",), ("label",), ("label_time",)), ("entity_id",),
                         ("event_id", "stream", "label", "entity_id", "source")),
}


def parse_duration(text: str) -> int:
    """Milliseconds from ``30m``, ``12h``, ``7d``, ``1.5h``, ``2w``, ``500ms``, ``90s``.

    >>> parse_duration("7d"), parse_duration("30m"), parse_duration("1.5h")
    (604800000, 1800000, 5400000)
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*", text or "")
    if not m:
        raise ReplayError(f"--label-delay {text!r}: expected a number and a unit, e.g. 30m, 12h, 7d "
                          f"(units: {', '.join(DURATION_UNITS_MS)}).")
    return int(round(float(m.group(1)) * DURATION_UNITS_MS[m.group(2)]))


def parse_maps(items: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or ():
        src, sep, dest = item.partition("=")
        if not sep or not src.strip() or not dest.strip():
            raise ReplayError(f"--map {item!r}: expected SOURCE=DEST, e.g. --map TX_AMOUNT=amount.")
        out[src.strip()] = dest.strip()
    return out


# --------------------------------------------------------------------------------------
# Reading: one pyarrow table, renamed, checked, sorted by event time
# --------------------------------------------------------------------------------------
@dataclass
class ReplayInput:
    """A file's rows in event-time order, as numpy columns (ids as ``str`` objects)."""

    stream: str
    path: Path
    columns: dict[str, np.ndarray]  # valid rows only, sorted by time
    times_ms: np.ndarray  # int64, the time column of ``columns``
    row_number: np.ndarray  # int64, each valid row's 0-based row in the file
    dead: list[DeadLetter] = field(default_factory=list)
    label_column: str | None = None
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # generated label events, by label_time
    file_rows: int = 0
    # Rows whose time could not be read, kept raw for the online path (the worker dead-letters them).
    unreadable_times: dict[int, Any] = field(default_factory=dict)
    # Transactions validated here: ids are str ("" when absent), amount/lat/lon float64, times
    # int64, what TransactionBatch holds, so a chunk becomes a batch without converting values.
    engine_types: bool = False
    # Validated transactions' string columns as pyarrow arrays, row for row with ``columns``.
    arrow: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.times_ms)


def read_table(path: Path, spec: StreamSpec, maps: dict[str, str]):
    """pyarrow table of a CSV or Parquet file, columns renamed by ``maps``."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if not path.exists():
        raise ReplayError(f"{path}: file not found. Simulate one with "
                          f"`riskstream simulate --out {path.with_suffix('.parquet').name}`.")
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        table = pq.read_table(path)
    elif name.endswith((".csv", ".csv.gz", ".csv.bz2", ".csv.zst")):
        inverse = {dest: src for src, dest in maps.items()}
        text_columns = {inverse.get(c, c): pa.string() for c in spec.strings}
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
            column_types=text_columns, strings_can_be_null=False, quoted_strings_can_be_null=False))
    else:
        raise ReplayError(f"{path}: expected a .csv or .parquet file.")
    have = table.column_names
    unknown = [src for src in maps if src not in have]
    if unknown:
        raise ReplayError(f"--map: {', '.join(unknown)} not in {path.name}; its columns are: {', '.join(have)}.")
    return table.rename_columns([maps.get(c, c) for c in have])


def check_columns(names: Sequence[str], stream: str, path: Path, label_column: str | None) -> None:
    spec = STREAMS[stream]
    missing = [" or ".join(group) for group in spec.required if not any(c in names for c in group)]
    if label_column and label_column not in names:
        missing.append(f"{label_column} (--label-column)")
    if missing:
        raise ReplayError(
            f"{path.name}: missing required column(s) for --stream {stream}: {'; '.join(missing)}.\n"
            f"The file has: {', '.join(names)}.\n"
            f"Rename with --map, e.g. --map TX_AMOUNT=amount --map CUSTOMER_ID=card_id.")


def times_to_ms(column) -> tuple[np.ndarray, np.ndarray]:
    """Epoch ms (int64) and a validity mask from ints/floats (epoch ms), pyarrow timestamps
    (naive = UTC) or ISO-8601 strings."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    typ = col.type
    if pa.types.is_timestamp(typ) or pa.types.is_date(typ):
        col = pc.cast(col, pa.timestamp("ms", tz=getattr(typ, "tz", None)))
        col = col.cast(pa.int64())
        typ = col.type
    if pa.types.is_integer(typ) or pa.types.is_floating(typ):
        values = col.to_numpy(zero_copy_only=False).astype(np.float64)
        ok = np.isfinite(values)
        ms = np.where(ok, values, 0).astype(np.int64)
        return ms, ok
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return _strings_to_ms(col.to_pylist())
    raise ReplayError(f"time column of type {typ}: expected epoch milliseconds, ISO-8601 text or a timestamp.")


def _strings_to_ms(values: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
    ms = np.zeros(len(values), dtype=np.int64)
    ok = np.zeros(len(values), dtype=bool)
    for i, v in enumerate(values):
        if not v:
            continue
        try:
            if v.lstrip("-").isdigit():
                ms[i] = int(v)
            else:
                dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
                if dt.tzinfo is None:
                    dt = dt.replace(tzinfo=timezone.utc)
                ms[i] = int(dt.timestamp() * 1000)
            ok[i] = True
        except ValueError:
            pass
    return ms, ok


def _text(column, repeats: bool = True) -> tuple[np.ndarray, Any]:
    """An object array of ``str`` ("" for null) from any pyarrow column, and the same values
    as a pyarrow string array.

    ``repeats``: one ``str`` per distinct value, shared by its rows, instead of one per row.
    Card, merchant, country... ids repeat, so this is a fraction of the memory, and a forked
    replay process, whose reference counting writes to every object it touches, copies that
    many fewer pages (measured on 1M rows: 645 MB of copied pages per process without it)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if column.type != pa.string():  # one type for the blocks of every file (large_string too)
        column = pc.cast(column, pa.string())
    column = pc.fill_null(column, "")
    if not repeats:
        return column.to_numpy(zero_copy_only=False).astype(object, copy=False), column
    whole = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    coded = whole.dictionary_encode()
    values = coded.dictionary.to_numpy(zero_copy_only=False).astype(object, copy=False)
    return values[coded.indices.to_numpy(zero_copy_only=False)], column


def _numbers(column) -> tuple[np.ndarray, np.ndarray]:
    """float64 values (NaN for null) and a mask of the values that were not numbers at all."""
    import pyarrow as pa

    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or pa.types.is_boolean(column.type):
        values = column.to_numpy(zero_copy_only=False).astype(np.float64)
        return values, np.zeros(len(values), dtype=bool)
    raw = column.to_pylist()
    values = np.full(len(raw), np.nan)
    not_number = np.zeros(len(raw), dtype=bool)
    for i, v in enumerate(raw):
        if v is None or v == "":
            continue
        try:
            values[i] = float(v)
        except (TypeError, ValueError):
            not_number[i] = True
    return values, not_number


def truthy(column) -> np.ndarray:
    """Rows where a ground-truth column is set: non-zero numbers, true, or 1/true/yes text."""
    import pyarrow as pa

    typ = column.type
    if pa.types.is_boolean(typ) or pa.types.is_integer(typ) or pa.types.is_floating(typ):
        values = column.to_numpy(zero_copy_only=False).astype(np.float64)
        return np.nan_to_num(values) != 0
    return np.asarray([str(v).strip().lower() in TRUTHY_STRINGS for v in column.to_pylist()], dtype=bool)


class _Reasons:
    """First reason per row, filled column by column (vectorised masks)."""

    def __init__(self, n: int):
        self.reason = np.full(n, None, dtype=object)

    def add(self, mask: np.ndarray, reason: str | Callable[[int], str]) -> None:
        rows = np.flatnonzero(mask & np.equal(self.reason, None))
        for i in rows:
            self.reason[i] = reason(i) if callable(reason) else reason

    @property
    def bad(self) -> np.ndarray:
        return ~np.equal(self.reason, None)


def validate_transactions(table, times_ms: np.ndarray, time_ok: np.ndarray, max_amount: float,
                          now_ms: int) -> tuple[dict[str, np.ndarray], dict[str, Any], _Reasons]:
    """The checks ``decode_transactions`` makes per record, as column operations over the file.
    Returns the engine's columns (card/merchant with their fallbacks), their string columns
    as pyarrow arrays too, and each bad row's reason."""
    n = table.num_rows
    names = set(table.column_names)
    why = _Reasons(n)
    both = {c: _text(table.column(c), repeats=c != "transaction_id")
            for c in ("transaction_id", "card_id", "customer_id", "merchant_id", "terminal_id", *TRANSACTION_OPTIONAL)
            if c in names}
    text = {c: values for c, (values, _) in both.items()}
    arrow = {c: array for c, (_, array) in both.items()}
    empty = np.full(n, "", dtype=object)

    def fallback(first: str, second: str) -> np.ndarray:
        """Per row ``first``, or ``second`` where it is empty, as the decoder takes them; the
        Arrow column of ``first`` gets the same."""
        values = text.get(first, empty)
        if second in text:
            values = np.where(values == "", text[second], values)
            arrow[first] = id_or(arrow[first], arrow[second]) if first in arrow else arrow[second]
        return values

    # Per row, like the decoder: the card, else the customer; the merchant, else the terminal.
    ids = dict(arrow)  # before the fallbacks
    card = fallback("card_id", "customer_id")
    merchant = fallback("merchant_id", "terminal_id")
    amount, not_number = _numbers(table.column("amount"))
    numbers = {"amount": not_number}
    geo = {}
    for name in ("lat", "lon"):
        if name in names:
            geo[name], numbers[name] = _numbers(table.column(name))
    for mask, reason in transaction_checks(ids, card, merchant, times_ms, time_ok, amount, geo, max_amount, now_ms,
                                           not_number=numbers):
        why.add(mask, reason)
    columns = {"transaction_id": text["transaction_id"], "event_time": times_ms, "card_id": card,
               "merchant_id": merchant, "amount": amount, **geo}
    for name in TRANSACTION_OPTIONAL:
        if name in text:
            columns[name] = text[name]
    arrow = {k: v for k, v in arrow.items() if k in columns}
    return columns, arrow, why


def load_input(path: str | Path, stream: str, maps: dict[str, str] | None = None, *,
               settings: Settings, label_column: str | None = None, label_delay_ms: int = 0,
               now_ms: int | None = None, validate: bool = True) -> ReplayInput:
    """Read, rename, check and sort a file; with ``validate`` (offline) bad transactions become
    dead letters here, as the decoder would make them."""
    if stream not in STREAMS:
        raise ReplayError(f"unknown --stream {stream!r}; choose one of: {', '.join(STREAMS)}.")
    if label_column and stream != "transactions":
        raise ReplayError("--label-column makes chargeback labels for transactions; "
                          "use it with --stream transactions (replay a labels file with --stream labels).")
    spec = STREAMS[stream]
    path = Path(path)
    maps = maps or {}
    table = read_table(path, spec, maps)
    check_columns(table.column_names, stream, path, label_column)
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    times_ms, time_ok = times_to_ms(table.column(spec.time_column))
    # Stable sort by time; unreadable times first (they only become dead letters).
    order = np.argsort(np.where(time_ok, times_ms, np.iinfo(np.int64).min), kind="stable")
    if not (np.diff(order) == 1).all():
        import pyarrow as pa

        table = table.take(pa.array(order))
        times_ms, time_ok = times_ms[order], time_ok[order]
    n = table.num_rows
    flagged = None
    if label_column:
        flagged = truthy(table.column(label_column))
        table = table.drop_columns([label_column])
    out = ReplayInput(stream=stream, path=path, columns={}, times_ms=times_ms, row_number=order.astype(np.int64),
                      label_column=label_column, file_rows=n)
    if stream == "transactions" and validate:
        columns, arrow, why = validate_transactions(table, times_ms, time_ok, settings.max_amount, now_ms)
        bad = why.bad
        if bad.any():
            out.dead = _dead_letters(table, np.flatnonzero(bad), why.reason, order, settings, stream, now_ms)
            keep = np.flatnonzero(~bad)
            columns = {k: v[keep] for k, v in columns.items()}
            arrow = {k: v.take(keep) for k, v in arrow.items()}
            out.times_ms, out.row_number = times_ms[keep], out.row_number[keep]
            flagged = flagged[keep] if flagged is not None else None
        out.columns = columns
        out.arrow = arrow
        out.engine_types = True
    else:
        out.columns = {c: _column_values(table.column(c)) for c in table.column_names}
        out.columns[spec.time_column] = times_ms
        out.unreadable_times = {int(i): table.column(spec.time_column)[int(i)].as_py()
                                for i in np.flatnonzero(~time_ok)}
    if flagged is not None:
        out.labels = label_events(out.columns, out.times_ms, flagged, label_delay_ms)
    return out


def _column_values(column) -> np.ndarray:
    import pyarrow as pa

    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column.to_numpy(zero_copy_only=False).astype(object, copy=False)
    return column.to_numpy(zero_copy_only=False)


def label_events(columns: dict[str, np.ndarray], times_ms: np.ndarray, flagged: np.ndarray,
                 delay_ms: int) -> dict[str, np.ndarray]:
    """Chargeback labels for the flagged transactions, at ``event_time + delay``, by label time."""
    rows = np.flatnonzero(flagged)
    label_time = times_ms[rows] + delay_ms
    order = np.argsort(label_time, kind="stable")
    rows, label_time = rows[order], label_time[order]
    # Keyed like the transaction (card, else customer), so the label reaches the card's partition.
    m = len(rows)
    card = np.full(len(times_ms), "", dtype=object)
    for name in ("customer_id", "card_id"):
        if name in columns:
            values = np.asarray(columns[name], dtype=object)
            card = np.where((values != "") & np.not_equal(values, None), values, card)
    return {
        "event_id": np.asarray(columns["transaction_id"], dtype=object)[rows],
        "stream": np.full(m, "transactions", dtype=object),
        "label": np.full(m, "chargeback", dtype=object),
        "is_positive": np.ones(m, dtype=np.int8),
        "label_time": label_time.astype(np.int64),
        "entity_id": card[rows].astype(object),
        "source": np.full(m, "replay", dtype=object),
        # Like a chargeback record: the merchant, terminal and date of the labelled payment.
        **{name: _text_or_empty(columns, name, len(times_ms))[rows] for name in ("merchant_id", "terminal_id")},
        "event_time": times_ms[rows].astype(np.int64),
    }


def _text_or_empty(columns: dict[str, np.ndarray], name: str, n: int) -> np.ndarray:
    if name not in columns:
        return np.full(n, "", dtype=object)
    values = np.asarray(columns[name], dtype=object)
    return np.where(np.not_equal(values, None), values, "").astype(object)


def _dead_letters(table, rows: np.ndarray, reasons: np.ndarray, order: np.ndarray, settings: Settings,
                  stream: str, now_ms: int) -> list[DeadLetter]:
    """The bad rows as the decoder would dead-letter them: the row as JSON, PANs masked;
    offset = the row's 0-based number in the file, so it can be found there."""
    import pyarrow as pa

    from riskstream.schemas.events import PanTokenizer

    tokenizer = PanTokenizer(settings.pan_key_bytes())
    records = table.take(pa.array(rows)).to_pylist()
    topic = settings.topic(stream)
    return [DeadLetter(topic, -1, int(order[i]), f"replay: {reasons[i]}",
                       tokenizer.mask(orjson.dumps(rec, default=str, option=orjson.OPT_SERIALIZE_NUMPY)),
                       received_at_ms=now_ms)
            for i, rec in zip(rows.tolist(), records)]


# --------------------------------------------------------------------------------------
# Offline: the engine in-process, results to ClickHouse in large blocks
# --------------------------------------------------------------------------------------
class ClickHouseBlocks:
    """Stands in for the worker's OutputPublisher offline: rows collect per table and go to
    ClickHouse in blocks of ``insert_rows`` on one background thread, two at close (chDB and
    the HTTP insert release the GIL, so writing overlaps scoring). Topics and Redis do not exist
    offline; what would have gone there is counted."""

    def __init__(self, settings: Settings, insert: Callable[..., int] | None = None,
                 insert_rows: int = INSERT_ROWS):
        from riskstream.sinks.clickhouse import insert_rows as default_insert

        self.settings = settings
        self.insert = insert or default_insert  # (settings, table, blocks, client=) like insert_rows
        self.insert_rows = insert_rows
        # Rows of the input not scored yet, once the replay reports its chunks (chunk_done;
        # None before). Near the end blocks shrink to what is left, so the last insert, which
        # scoring cannot overlap, is small (see _due).
        self.rows_to_come: int | None = None
        self.pending: dict[str, list[Any]] = {}  # per table: JSON rows, or Arrow parts as "table@ArrowStream"
        self.pending_rows: dict[str, int] = {}
        self.waited_s = 0.0  # time the scoring loop waited for ClickHouse (backlog full)
        # Set by close(): when the last row was in ClickHouse, and how long closing the client
        # took after that (an embedded chDB waits for the merges it started; a server does not).
        self.written_at: float | None = None
        self.client_close_s = 0.0
        self.counts: dict[str, int] = {}
        self.rows_written: dict[str, int] = {}
        # Backpressure by rows, not blocks: a hand-over puts every table's block at once, and
        # scoring waits only once two hand-overs' worth are still to write.
        self.max_backlog_rows = 4 * insert_rows
        self._backlog_rows = 0
        self._backlog_changed = threading.Condition()
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._client = None
        self._tail_client = None
        if insert is None and not _sink_owns_clickhouse(settings):
            from riskstream.sinks.clickhouse import ensure_schema, open_client

            self._client = open_client(settings)  # one client for the run, not one per block
            ensure_schema(self._client)
            # A second client for close(): once the last chunk is scored a core is free, and
            # what is still queued then goes in on two threads (on one, that tail took
            # 160-230 ms). Measured on the bench's 300k files, alternating: 5 of 5 runs faster
            # on one (e.g. 185k against 173k tx/s), 4 of 4 on another (e.g. 212k against 193k).
            # Two writers from the start, or from the shrinking blocks near the end, took CPU
            # from the scoring and were not faster.
            self._tail_client = open_client(settings)
        self._rows_lock = threading.Lock()  # rows_written, from both writers at close
        self._threads = [threading.Thread(target=self._write_loop, args=(self._client,), daemon=True,
                                          name="replay-clickhouse")]
        self._threads[0].start()

    # -- the OutputPublisher surface used by publish_transactions ---------------------
    publishes_topics = False  # offline: no decisions topic, so no per-decision JSON to build
    takes_arrow_tables = True  # Arrow rows come as tables; the writer thread serialises them

    def send(self, stream: str, messages) -> None:
        self.counts[stream] = self.counts.get(stream, 0) + len(messages)

    def sink(self, table: str, rows: list[bytes]) -> None:
        if rows:
            self._add(table, rows, len(rows))

    def sink_arrow(self, table: str, blocks: list[Any], rows: int = 0) -> None:
        """Arrow IPC streams or tables for a table (the engine's columnar encoding of some tables)."""
        if blocks:
            self._add(f"{table}@ArrowStream", blocks, rows)

    def limits(self, limits: list[dict[str, Any]]) -> None:
        self.counts["limits_issued"] = self.counts.get("limits_issued", 0) + len(limits)

    def dead_letters(self, dead: list[DeadLetter]) -> None:
        if dead:
            self.sink("dead_letters", [orjson.dumps({**d.row(), "received_at": d.received_at_ms / 1000.0})
                                       for d in dead])
            self.counts["dead_letters"] = self.counts.get("dead_letters", 0) + len(dead)

    # -------------------------------------------------------------------------------
    def chunk_done(self, rows_to_come: int) -> None:
        """The replay finished a chunk; ``rows_to_come`` rows are left to score. From the first
        call on, blocks are handed over here, between chunks, so that a chunk's decisions and
        transactions go in the same hand-over.

        Every table goes with a full hand-over, not just the full one: the small tables
        (alerts, labels, limits) would otherwise wait whole for the end, where nothing overlaps
        their inserts. Near the end only the tables that are due go: an insert costs ~5 ms
        however few its rows, and three small inserts with every shrunken hand-over made the
        writer fall a hand-over behind the scoring; what is left of them goes at close."""
        self.rows_to_come = rows_to_come
        due = [key for key, rows in self.pending_rows.items() if self._due(rows)]
        if due:
            self._hand_over(list(self.pending) if rows_to_come >= self.insert_rows else due)

    def _add(self, key: str, parts: list[Any], rows: int) -> None:
        self.pending.setdefault(key, []).extend(parts)
        self.pending_rows[key] = n = self.pending_rows.get(key, 0) + rows
        if self.rows_to_come is None and self._due(n):
            self._hand_over(list(self.pending))

    def _due(self, pending_rows: int) -> bool:
        """Blocks go to ClickHouse at ``insert_rows`` rows of one table, or, near the end of a
        replay, once they are as many as the rows still to score (at least
        ``TAIL_INSERT_ROWS``): each block's insert then overlaps the scoring of the rest, and
        what the replay waits for at close is small, not up to ``insert_rows``."""
        if self.rows_to_come is None:
            return pending_rows >= self.insert_rows
        return pending_rows >= min(self.insert_rows, max(TAIL_INSERT_ROWS, self.rows_to_come))

    def _hand_over(self, keys: list[str]) -> None:
        self._check()
        t0 = time.perf_counter()
        for key in keys:
            parts, rows = self.pending.pop(key), self.pending_rows.pop(key)
            with self._backlog_changed:
                while self._backlog_rows >= self.max_backlog_rows and self._threads[0].is_alive():
                    self._backlog_changed.wait(0.5)
                self._backlog_rows += rows
            self._queue.put((key, parts, rows))
        self.waited_s += time.perf_counter() - t0

    def _write_loop(self, client) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            key, parts, rows = item
            try:
                if self._error is None:  # after an error: drain; the main thread raises it
                    table, _, fmt = key.partition("@")
                    written = self._write(table, fmt, parts, client)
                    with self._rows_lock:
                        self.rows_written[table] = self.rows_written.get(table, 0) + written
            except BaseException as exc:  # reported to the main thread, which stops the replay
                self._error = exc
            finally:
                with self._backlog_changed:
                    self._backlog_rows -= rows
                    self._backlog_changed.notify_all()

    def _write(self, table: str, fmt: str, parts: list[Any], client) -> int:
        """Rows written; ``fmt`` is "ArrowStream", or "" for JSON rows; ``client`` is None when
        ``insert`` goes through the embedded stack's sink."""
        if fmt == "ArrowStream":
            return self._insert_arrow(table, parts, client)
        self.insert(self.settings, table, [b"\n".join(parts)], client=client)
        return len(parts)

    def _insert_arrow(self, table: str, blocks: list[Any], client) -> int:
        import pyarrow as pa

        if client is not None:
            blob, rows = combine_blocks(blocks, "ArrowStream")
            client.raw_insert(table, None, blob, fmt="ArrowStream", settings=ARROW_INSERT_SETTINGS)
            return rows
        # through the sink's JSONEachRow /insert; DateTime64 reads JSON numbers as seconds
        combined = concat_arrow_tables(arrow_tables(blocks))
        for name in combined.column_names:
            if pa.types.is_timestamp(combined.schema.field(name).type):
                ms = combined.column(name).cast(pa.int64()).to_numpy(zero_copy_only=False) / 1000.0
                combined = combined.set_column(combined.column_names.index(name), name, pa.array(ms))
        rows = [orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY) for r in combined.to_pylist()]
        self.insert(self.settings, table, [b"\n".join(rows)], client=None)
        return combined.num_rows

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> dict[str, int]:
        """Write what is left and wait for it, on two writers when this owns the client (the
        blocks of one table may then go in out of order: no table here depends on it);
        returns rows written per table."""
        try:
            if self._tail_client is not None:
                second = threading.Thread(target=self._write_loop, args=(self._tail_client,), daemon=True,
                                          name="replay-clickhouse-tail")
                self._threads.append(second)
                second.start()
            self._hand_over(list(self.pending))
        finally:
            for _ in self._threads:
                self._queue.put(None)
            for t in self._threads:
                t.join()
            self.written_at = time.perf_counter()
            if self._client is not None:
                # Now, not when this object is collected: an embedded chDB serves one data
                # path per process, and a traceback that keeps this object alive would keep
                # the next replay (or query) in this process from opening another path.
                clients, self._client, self._tail_client = (self._client, self._tail_client), None, None
                for client in clients:
                    client.close()
            self.client_close_s = time.perf_counter() - self.written_at
        self._check()
        return self.rows_written


def _sink_owns_clickhouse(settings: Settings) -> bool:
    """The embedded stack's sink has the chDB path open: write through its /insert endpoint."""
    if settings.clickhouse_dsn.get_secret_value():
        return False
    from riskstream.stack import running_stack

    return bool(running_stack(settings).get("sink_query"))


@dataclass
class ReplaySummary:
    stream: str
    rows: int
    labels: int
    dead_letters: int
    seconds: float
    rows_written: dict[str, int] = field(default_factory=dict)
    profile: dict[str, float] = field(default_factory=dict)  # seconds per stage (offline)
    processes: int = 1  # offline: how many processes scored (stage seconds are summed over them)

    @property
    def rate(self) -> float:
        return self.rows / max(self.seconds, 1e-9)

    @property
    def rate_with_close(self) -> float:
        """Offline: the rate counting the ClickHouse client's close after the last row (an
        embedded chDB waits there for the merges it started; a server merges in the background)."""
        return self.rows / max(self.seconds + self.profile.get("clickhouse_close", 0.0), 1e-9)


class Progress:
    """One line on stderr about once a second: rows, % done, rows/s."""

    def __init__(self, total: int, what: str, out=None, every_s: float = 1.0):
        self.total, self.what, self.out, self.every_s = total, what, out, every_s
        self.t0 = self.last = time.perf_counter()
        self.last_done = 0

    def update(self, done: int, extra: str = "") -> None:
        now = time.perf_counter()
        if now - self.last < self.every_s and done < self.total:
            return
        rate = (done - self.last_done) / max(now - self.last, 1e-9)
        pct = 100.0 * done / max(self.total, 1)
        print(f"replay [{now - self.t0:6.1f}s] {done:>11,}/{self.total:,} {self.what} ({pct:5.1f}%) "
              f"{rate:>9,.0f}/s{extra}", file=self.out or sys.stderr, flush=True)
        self.last, self.last_done = now, done


def transaction_chunks(data: ReplayInput, chunk_rows: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """(start, end, labels due) per chunk, in event-time order: the labels whose ``label_time``
    is before the chunk's first event time, i.e. known before any of its rows happened.
    Labels after the last row come last, with ``start == end == n``."""
    labels = DueLabels(data.labels.get("label_time", np.zeros(0, dtype=np.int64)))
    n = data.n
    for start in range(0, n, chunk_rows):
        yield start, min(n, start + chunk_rows), labels.before(int(data.times_ms[start]))
    rest = labels.rest()
    if len(rest):
        yield n, n, rest


class DueLabels:
    """Labels sorted by ``label_time``, handed out once each as event time moves on: the
    worker's order (a label is learned before any event after its time is scored), for the
    offline replay and the bench's in-process engine."""

    def __init__(self, label_time: np.ndarray):
        self.label_time = label_time
        self.handed = 0  # labels[:handed] are out

    def before(self, event_time_ms: int) -> np.ndarray:
        """Indices of the labels not yet out whose time is before ``event_time_ms``."""
        due = max(self.handed, int(np.searchsorted(self.label_time, event_time_ms, side="left")))
        out, self.handed = np.arange(self.handed, due), due
        return out

    def rest(self) -> np.ndarray:
        """Indices of the labels still not out (those after the last event)."""
        out, self.handed = np.arange(self.handed, len(self.label_time)), len(self.label_time)
        return out


def label_rows(labels: dict[str, np.ndarray], index: np.ndarray) -> list[dict]:
    cols = list(labels)
    values = [labels[c][index].tolist() for c in cols]
    return [dict(zip(cols, row)) for row in zip(*values)]


def chunk_batch(data: ReplayInput, start: int, end: int, tokenizer) -> TransactionBatch:
    """Rows ``start:end`` as the engine's batch. Validated input (``data.engine_types``) is
    already in the batch's types, so the batch is views of its columns; otherwise
    ``TransactionBatch.from_columns`` converts every value (1.2 us a row measured, 0.06 here)."""
    cols = data.columns
    if not data.engine_types:
        return TransactionBatch.from_columns({k: v[start:end] for k, v in cols.items()}, tokenizer)
    n = end - start
    absent = constant_column(n, "")
    optional = {k: cols[k][start:end] if k in cols else absent for k in TRANSACTION_OPTIONAL}
    arrow = {k: v.slice(start, n) for k, v in data.arrow.items()}
    # Card numbers in the card or the customer id become tokens, as the decoder makes them;
    # where a column held one, the file's own Arrow column is never written.
    raw_card, raw_customer = cols["card_id"][start:end], optional["customer_id"]
    card = tokenize_pans(raw_card, tokenizer, arrow.get("card_id"))
    if raw_customer is not absent:
        optional["customer_id"] = tokenize_pans(raw_customer, tokenizer, arrow.get("customer_id"))
    if card is not raw_card:
        arrow.pop("card_id", None)
    if optional["customer_id"] is not raw_customer:
        arrow.pop("customer_id", None)
    nan = np.full(n, np.nan)
    return TransactionBatch(
        transaction_id=cols["transaction_id"][start:end],
        event_time_ms=data.times_ms[start:end],
        card_id=card,
        merchant_id=cols["merchant_id"][start:end],
        amount=cols["amount"][start:end],
        lat=cols["lat"][start:end] if "lat" in cols else nan,
        lon=cols["lon"][start:end] if "lon" in cols else nan,
        optional=optional,
        partition=np.full(n, -1, dtype=np.int32),
        offset=np.full(n, -1, dtype=np.int64),
        arrow=arrow or None,
    )


def score_transaction_chunks(data: ReplayInput, settings: Settings, engine, publisher, prof: dict[str, float],
                             on_chunk: Callable[[int], None]) -> int:
    """The offline transaction loop: per chunk of ``batch_max_events`` rows, the labels due
    before it are learned, then it is scored and its outputs go to ``publisher``;
    ``on_chunk(rows done)`` follows each chunk. Adds seconds per stage to ``prof``; returns
    the labels fed."""
    from riskstream.streams.engine import publish_transactions, rows_for_table

    tokenizer = engine.tokenizer
    topic = settings.topic("transactions")
    labels_fed = 0
    for start, end, due in transaction_chunks(data, settings.batch_max_events):
        t0 = time.perf_counter()
        if len(due):
            rows = label_rows(data.labels, due)
            engine.learn(rows)
            publisher.sink("labels", rows_for_table(rows))
            labels_fed += len(rows)
        t1 = time.perf_counter()
        prof["labels"] += t1 - t0
        if end == start:
            continue
        batch = chunk_batch(data, start, end, tokenizer)
        t2 = time.perf_counter()
        result = engine.score_batch(batch, topic=topic)
        t3 = time.perf_counter()
        publish_transactions(publisher, result)
        t4 = time.perf_counter()
        prof["batch"] += t2 - t1
        prof["engine"] += t3 - t2
        prof["encode"] += t4 - t3
        on_chunk(end)
    return labels_fed


def replay_offline(data: ReplayInput, settings: Settings, engine=None, writer: ClickHouseBlocks | None = None,
                   progress: Progress | None = None, processes: int = 1) -> ReplaySummary:
    """Score the file in-process with the worker's code, in chunks of ``batch_max_events``.

    With ``processes > 1`` a transactions file is split by card over that many processes
    (:func:`replay_sharded`); other streams always run in this process. While it runs, the
    process is tuned for scoring (see :func:`_process_tuning_restored`)."""
    from riskstream.streams.engine import tune_garbage_collector

    if processes > 1 and data.stream == "transactions" and engine is not None:
        raise ValueError("replay_offline: an engine lives in one process; pass engine=None with processes > 1")
    with _process_tuning_restored():
        # Before any engine is built or process forked (the processes inherit a frozen heap).
        # Tuning after the build instead (freezing the engine too) measured slower on the
        # bench's 300k file: 5 of 6 runs, alternating.
        tune_garbage_collector()
        if processes > 1 and data.stream == "transactions":
            return replay_sharded(data, settings, processes, writer=writer, progress=progress)
        return _replay_in_process(data, settings, engine, writer, progress)


@contextmanager
def _process_tuning_restored() -> Iterator[None]:
    """A replay tunes its process for scoring (the garbage collector, NumPy's huge pages, the
    switch interval); afterwards a caller that goes on (the bench, tests, a notebook) has
    its own settings back."""
    import gc

    thresholds, frozen = gc.get_threshold(), gc.get_freeze_count()
    switch_interval = sys.getswitchinterval()
    hugepages = _numpy_hugepages(False)
    try:
        yield
    finally:
        sys.setswitchinterval(switch_interval)
        gc.set_threshold(*thresholds)
        if not frozen:
            gc.unfreeze()
        if hugepages is not None:
            _numpy_hugepages(hugepages)


def _replay_in_process(data: ReplayInput, settings: Settings, engine, writer: ClickHouseBlocks | None,
                       progress: Progress | None) -> ReplaySummary:
    from riskstream.streams.engine import Engine, ROW_TABLES, rows_for_table

    t_start = time.perf_counter()
    engine = engine or Engine(settings)
    writer = writer or ClickHouseBlocks(settings)
    prof = {"engine": 0.0, "batch": 0.0, "encode": 0.0, "labels": 0.0}
    chunk = settings.batch_max_events
    labels_fed = 0
    # The writer thread takes the GIL back after each ClickHouse or Arrow call, waiting up to a
    # switch interval for the scoring thread to yield it: 5 ms by default put the writer
    # 100-200 ms behind at the end. 1 ms: 300k file, 3 runs each alternating, 178-186k ->
    # 188-193k tx/s.
    sys.setswitchinterval(min(sys.getswitchinterval(), WRITER_SWITCH_INTERVAL_S))
    t_run = time.perf_counter()
    try:
        writer.dead_letters(data.dead)
        if data.stream == "transactions":
            progress = progress or Progress(data.n, "transactions")

            def chunk_done(done: int) -> None:
                writer.chunk_done(data.n - done)
                progress.update(done)

            labels_fed = score_transaction_chunks(data, settings, engine, writer, prof, chunk_done)
        else:
            progress = progress or Progress(data.n, data.stream)
            table = ROW_TABLES[data.stream]
            names = list(data.columns)
            dumps = orjson.dumps
            for start in range(0, data.n, chunk):
                end = min(data.n, start + chunk)
                records = []
                for j, row in enumerate(zip(*(data.columns[c][start:end].tolist() for c in names))):
                    i = start + j
                    rec = dict(zip(names, row))
                    if i in data.unreadable_times:
                        rec[STREAMS[data.stream].time_column] = data.unreadable_times[i]
                    records.append((dumps(rec, default=str), -1, int(data.row_number[i])))
                t0, waited0 = time.perf_counter(), writer.waited_s
                rows, dead = engine.process_rows(data.stream, records)
                writer.sink(table, rows_for_table(rows))
                writer.dead_letters(dead)
                if data.stream == "loan_applications" and engine.credit is not None:
                    writer.sink("decisions", [dumps(d) for d in engine.credit_decisions(rows)])
                if data.stream == "labels":
                    labels_fed += len(rows)
                prof["engine"] += time.perf_counter() - t0 - (writer.waited_s - waited0)  # waits: clickhouse_wait
                progress.update(end)
        t_close = time.perf_counter()
        rows_written = writer.close()
    except BaseException:
        try:
            writer.close()
        except BaseException:
            pass
        raise
    # Transactions wait for the writer only between chunks (chunk_done), outside the stages.
    seconds = _closed(writer, prof, t_start, t_run, t_close)
    return ReplaySummary(data.stream, data.n, labels_fed, writer.counts.get("dead_letters", 0), seconds,
                         rows_written, prof)


# --------------------------------------------------------------------------------------
# Offline in N processes: the cards split the way a topic's partitions split them
# --------------------------------------------------------------------------------------
def _closed(writer: ClickHouseBlocks, prof: dict[str, float], t_start: float, t_run: float, t_close: float) -> float:
    """A replay's seconds once its writer has closed: from the run's start to its last row in
    ClickHouse. Building the engine (JIT) goes to ``setup``, the writer's waits to
    ``clickhouse_wait``, and closing the client after the last row to ``clickhouse_close``."""
    prof["clickhouse_wait"] = writer.written_at - t_close + writer.waited_s
    prof["setup"] = t_run - t_start
    prof["clickhouse_close"] = writer.client_close_s
    return writer.written_at - t_run


class ShardFailed(RuntimeError):
    """A replay process failed; the message carries its error and its traceback."""


def default_processes() -> int:
    """Scoring processes for an offline replay: one per core but one, which the parent's
    ClickHouse writer needs. On 2 cores two scoring processes lost to one (bench, with labels:
    46,600 against 78,900 tx/s; without: 94k against 98k), as all three fought for the cores."""
    return max(1, (os.cpu_count() or 1) - 1)


def card_shards(cards: np.ndarray, n: int) -> np.ndarray:
    """Each card's shard: ``crc32(card) % n``, what librdkafka's default partitioner does with
    a message key, so shard ``k`` holds the cards that partition ``k`` of an ``n``-partition
    topic carries. Stable across runs and machines (unlike ``hash()``).

    >>> card_shards(np.array(["card-1", "card-4", "card-1", "d"], dtype=object), 2).tolist()
    [0, 1, 0, 0]
    """
    crc = zlib.crc32
    return np.fromiter((crc(("" if c is None else str(c)).encode()) % n for c in cards.tolist()),
                       dtype=np.int32, count=len(cards))


def shard_input(data: ReplayInput, row_shard: np.ndarray, label_shard: np.ndarray, k: int) -> ReplayInput:
    """Shard ``k`` of the input: its cards' rows and their labels, in the same event-time order.
    Dead letters stay with the parent, which writes them once."""
    rows = np.flatnonzero(row_shard == k)
    labels = np.flatnonzero(label_shard == k)
    return ReplayInput(stream=data.stream, path=data.path, columns={c: v[rows] for c, v in data.columns.items()},
                       times_ms=data.times_ms[rows], row_number=data.row_number[rows],
                       label_column=data.label_column, labels={c: v[labels] for c, v in data.labels.items()},
                       file_rows=len(rows), engine_types=data.engine_types,
                       arrow={c: v.take(rows) for c, v in data.arrow.items()})


class RecordedOutputs:
    """The publisher surface of :class:`ClickHouseBlocks` in a replay process. chDB lets one
    process own a data path, so a replay process does not write: it records each chunk's
    calls (JSON rows and Arrow IPC blocks, as bytes) and the parent makes them, in order, on
    its one writer (:func:`make_calls`)."""

    publishes_topics = False
    CALLS = frozenset({"send", "sink", "sink_arrow", "limits", "dead_letters"})

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def send(self, stream: str, messages) -> None:
        self.calls.append(("send", stream, messages))

    def sink(self, table: str, rows: list[bytes]) -> None:
        if rows:
            self.calls.append(("sink", table, rows))

    def sink_arrow(self, table: str, blocks: list[bytes], rows: int = 0) -> None:
        if blocks:
            self.calls.append(("sink_arrow", table, blocks, rows))

    def limits(self, limits: list[dict[str, Any]]) -> None:
        self.calls.append(("limits", limits))

    def dead_letters(self, dead: list[DeadLetter]) -> None:
        if dead:
            self.calls.append(("dead_letters", dead))

    def take(self) -> list[tuple]:
        calls, self.calls = self.calls, []
        return calls


def make_calls(publisher, calls: list[tuple]) -> None:
    for name, *call_args in calls:
        if name not in RecordedOutputs.CALLS:
            raise ValueError(f"not a publisher call: {name!r}")
        getattr(publisher, name)(*call_args)


def _warm_up(engine, data: ReplayInput, rows: int = 64) -> None:
    """A few of the input's rows, and a label, through a throwaway engine, so that the numba
    kernels are compiled (or loaded from numba's cache) once, before forking: the replay
    processes inherit the machine code. ``Engine()`` compiles the rule kernel itself; the
    processes share its holder."""
    from riskstream.streams.engine import publish_transactions

    m = min(rows, data.n)
    if m == 0:
        return
    if len(data.labels.get("label_time", ())):
        label = label_rows(data.labels, np.arange(1))[0]
        label["event_time"] = label["label_time"] = int(data.times_ms[0])  # due at the first row
        engine.learn([label])
    batch = chunk_batch(data, 0, m, engine.tokenizer)
    publish_transactions(RecordedOutputs(), engine.score_batch(batch, topic=engine.settings.topic("transactions")))


SHARD_STAGES = ("labels", "batch", "engine", "encode", "send")


def _replay_shard(k: int, data: ReplayInput, row_shard: np.ndarray, label_shard: np.ndarray, settings: Settings,
                  rules, conn, inherited: list) -> None:
    """One replay process (forked): its own engine over shard ``k``; every chunk's outputs go
    to the parent over ``conn``, whose blocking send bounds what waits in memory to one chunk."""
    # Ctrl-C reaches the whole process group: the parent decides, and stops us with SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for c in inherited:  # only the parent may hold a read end: if it dies, our next send fails
        c.close()
    _numpy_hugepages(False)
    try:
        from riskstream.streams.engine import Engine, tune_garbage_collector

        shard = shard_input(data, row_shard, label_shard, k)
        engine = Engine(settings, rules_holder=rules)
        tune_garbage_collector(collect=False)
        outputs = RecordedOutputs()
        prof = dict.fromkeys(SHARD_STAGES, 0.0)

        def chunk_done(done: int) -> None:
            t0 = time.perf_counter()
            conn.send(("chunk", done, outputs.take()))
            prof["send"] += time.perf_counter() - t0

        labels = score_transaction_chunks(shard, settings, engine, outputs, prof, chunk_done)
        conn.send(("done", shard.n, outputs.take(), labels, prof))
    except BaseException as exc:
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        except (OSError, ValueError):
            pass  # the parent is gone
        sys.exit(1)


def _numpy_hugepages(enabled: bool) -> bool | None:
    """Whether NumPy asks for transparent huge pages on arrays of 4 MB and more; returns the
    previous setting (None where NumPy cannot say). A replay turns them off: it allocates
    such arrays afresh for every chunk, and each then costs a 2 MB clear, or a copy in a
    forked process. Measured, a shard's kernel time fell from 3.3 to 0.9 us a transaction
    without them, and the one-process replay's engine time from 4.65 to 4.47 us (7 runs
    each, alternating). NUMPY_MADVISE_HUGEPAGE=0 does the same, but is read only when numpy
    is imported."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray
    setter = getattr(multiarray, "_set_madvise_hugepage", None)
    return None if setter is None else bool(setter(enabled))


def _widen_pipe(fd: int, size: int = 1 << 20) -> None:
    """A chunk's outputs are ~1.7 MB: a 1 MiB pipe (Linux's default maximum) instead of 64 KiB
    means fewer wake-ups of the parent per chunk. Best effort: elsewhere the pipe stays as is."""
    import fcntl

    try:
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), size)
    except OSError:
        pass


def _stop_processes(procs: list, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if one is still there after ``timeout`` seconds."""
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    deadline = time.monotonic() + timeout
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join(5)


def replay_sharded(data: ReplayInput, settings: Settings, processes: int, writer: ClickHouseBlocks | None = None,
                   progress: Progress | None = None) -> ReplaySummary:
    """Score a transactions file in ``processes`` forked processes, one shard of the cards each
    (:func:`card_shards`), like as many online workers each owning a share of the partitions.

    Each process builds its own engine and runs the same chunk loop over its shard in event
    time order, its labels included. So card-level features are the same as in one process,
    while merchant/terminal features and the models see only their process's traffic: scores
    can differ slightly from a one-process run. Only this process writes ClickHouse."""
    import multiprocessing

    from riskstream.streams.engine import Engine

    t_start = time.perf_counter()
    # fork: the processes inherit the input and the compiled kernels; it happens before this
    # process opens chDB or starts the writer's thread (unless a writer is passed in).
    ctx = multiprocessing.get_context("fork")
    warm = Engine(settings)
    _warm_up(warm, data)
    t_run = time.perf_counter()
    cards = data.columns["card_id"] if "card_id" in data.columns else data.columns["customer_id"]
    row_shard = card_shards(cards, processes)
    label_shard = card_shards(data.labels["entity_id"], processes) if data.labels else np.zeros(0, np.int32)
    progress = progress or Progress(data.n, "transactions")
    pipes = [ctx.Pipe(duplex=False) for _ in range(processes)]  # (parent's read end, child's write end)
    for _, child_end in pipes:
        _widen_pipe(child_end.fileno())
    procs: list = []
    output: _OpeningWriter | None = None
    prof = dict.fromkeys(SHARD_STAGES, 0.0)
    try:
        for k, (_, child_end) in enumerate(pipes):
            inherited = [c for pipe in pipes for c in pipe if c is not child_end]
            proc = ctx.Process(target=_replay_shard, name=f"riskstream-replay-{k}", daemon=True,
                               args=(k, data, row_shard, label_shard, settings, warm.rules, child_end, inherited))
            proc.start()
            procs.append(proc)
        for _, child_end in pipes:
            child_end.close()
        del warm
        output = _OpeningWriter(writer, settings, backlog_chunks=2 * processes)
        output.make([("dead_letters", data.dead)], data.n)
        labels_fed = _collect([reader for reader, _ in pipes], procs, output, progress, prof, data.n)
        for proc in procs:
            proc.join(10)
        opened = output.writer()
        t_close = time.perf_counter()
        rows_written = opened.close()
    except BaseException:
        _stop_processes(procs)  # first, so that none is left writing while the writer drains
        if output is not None:
            output.close_quietly()
        raise
    finally:
        _stop_processes(procs)
        for reader, _ in pipes:
            reader.close()
    seconds = _closed(opened, prof, t_start, t_run, t_close)
    prof["receive"] = max(0.0, prof["receive"] - opened.waited_s)
    return ReplaySummary(data.stream, data.n, labels_fed, opened.counts.get("dead_letters", 0), seconds,
                         rows_written, prof, processes)


class _OpeningWriter:
    """The parent's writer, opened on a thread: chDB takes a good part of a second to start,
    and meanwhile the replay processes score instead of waiting on full pipes. Their first
    chunks wait here, at most ``backlog_chunks`` of them, then the writer is waited for."""

    def __init__(self, writer: ClickHouseBlocks | None, settings: Settings, backlog_chunks: int):
        from concurrent.futures import Future, ThreadPoolExecutor

        self._backlog: list[tuple[list[tuple], int]] = []
        self._limit = backlog_chunks
        self._writer = writer
        self._future: Future | None = None
        if writer is None:  # threads only now, after the fork
            pool = ThreadPoolExecutor(1, thread_name_prefix="replay-open")
            self._future = pool.submit(ClickHouseBlocks, settings, insert_rows=SHARDED_INSERT_ROWS)
            pool.shutdown(wait=False)  # its thread ends once the writer is open

    def make(self, calls: list[tuple], rows_to_come: int) -> None:
        """A process's recorded calls for a chunk; ``rows_to_come``: rows no process has
        scored yet (see ClickHouseBlocks.chunk_done)."""
        self._backlog.append((calls, rows_to_come))
        if self._writer is None and not self._future.done() and len(self._backlog) <= self._limit:
            return
        self.writer()

    def writer(self) -> ClickHouseBlocks:
        """The open writer, with the chunks that waited for it written."""
        if self._writer is None:
            self._writer = self._future.result()  # raises what opening raised
        while self._backlog:
            calls, rows_to_come = self._backlog.pop(0)
            make_calls(self._writer, calls)
            self._writer.chunk_done(rows_to_come)
        return self._writer

    def close_quietly(self) -> None:
        """After a failure: close the writer once it is open, without raising."""
        try:
            writer = self._writer or self._future.result()
            writer.close()
        except BaseException:
            pass


def _collect(readers: list, procs: list, writer: _OpeningWriter, progress: Progress, prof: dict[str, float],
             total: int) -> int:
    """Make each process's recorded calls on the writer as its chunks arrive, until all are
    done; a process that fails or dies stops the replay. Returns the labels fed.

    Messages: ``("chunk", rows done, calls)``, ``("done", rows done, calls, labels, stage
    seconds)`` and ``("error", error, traceback)``."""
    from multiprocessing.connection import wait

    shard = {reader: k for k, reader in enumerate(readers)}
    pending = set(readers)
    done = [0] * len(readers)
    labels = 0
    prof["receive"] = 0.0
    last_line = False  # the 100% line is printed once
    while pending:
        for reader in wait(list(pending), timeout=1.0):
            k = shard[reader]
            t0 = time.perf_counter()
            try:
                msg = reader.recv()
            except EOFError:
                procs[k].join(5)
                raise ShardFailed(f"replay process {k + 1} of {len(readers)} exited (code {procs[k].exitcode}) "
                                  "before finishing its shard") from None
            if msg[0] == "error":
                raise ShardFailed(f"replay process {k + 1} of {len(readers)} failed: {msg[1]}\n{msg[2]}")
            done[k] = msg[1]
            writer.make(msg[2], total - sum(done))
            if msg[0] == "done":
                labels += msg[3]
                for stage, seconds in msg[4].items():
                    prof[stage] += seconds
                pending.discard(reader)
            prof["receive"] += time.perf_counter() - t0
        if not last_line:
            progress.update(sum(done), f", {len(readers)} processes")
            last_line = sum(done) >= total
    return labels


# --------------------------------------------------------------------------------------
# Online: JSON messages to the topics, labels interleaved by time
# --------------------------------------------------------------------------------------
def message_order(data: ReplayInput) -> tuple[np.ndarray, np.ndarray]:
    """(is_label, index) of every message in time order; at equal times the event goes first,
    so a label never precedes the transaction it is about."""
    n = data.n
    label_time = data.labels.get("label_time", np.zeros(0, dtype=np.int64))
    times = np.concatenate([data.times_ms, label_time])
    order = np.argsort(times, kind="stable")
    is_label = order >= n
    return is_label, np.where(is_label, order - n, order)


def replay_online(data: ReplayInput, settings: Settings, rate: float | None = None, producer=None,
                  progress: Progress | None = None) -> ReplaySummary:
    """Produce every row (and label) to its topic in time order; ``rate`` paces open loop."""
    from riskstream.stack import ensure_topics

    conf = settings.kafka_client_config()  # ConfigError when there is no Kafka: says `riskstream stack up`
    if producer is None:
        from confluent_kafka import Producer

        ensure_topics(settings)
        producer = Producer({**conf, "linger.ms": 5, "compression.type": "lz4",
                             "queue.buffering.max.messages": 1_000_000, "batch.num.messages": 10_000})
    spec = STREAMS[data.stream]
    topic, label_topic = settings.topic(data.stream), settings.topic("labels")
    names = [c for c in data.columns]
    key_col = next((c for c in spec.key if c in data.columns), None)
    failed: list[str] = []

    def on_delivery(err, msg) -> None:
        if err is not None:
            failed.append(f"{msg.topic()}: {err}")

    columns = [data.columns[c].tolist() if hasattr(data.columns[c], "tolist") else list(data.columns[c])
               for c in names]
    for i, raw in data.unreadable_times.items():
        columns[names.index(spec.time_column)][i] = raw
    keys = columns[names.index(key_col)] if key_col else None
    label_cols = list(data.labels)
    label_values = [data.labels[c].tolist() for c in label_cols]
    label_keys = data.labels["entity_id"].tolist() if data.labels else []
    is_label, index = message_order(data)
    total = len(index)
    progress = progress or Progress(total, "messages")
    dumps = orjson.dumps
    t0 = time.perf_counter()
    produced = labels = 0
    for is_lab, i in zip(is_label.tolist(), index.tolist()):
        if is_lab:
            t, key = label_topic, label_keys[i]
            value = dumps(dict(zip(label_cols, (col[i] for col in label_values))))
            labels += 1
        else:
            t, key = topic, keys[i] if keys is not None else None
            value = dumps({c: col[i] for c, col in zip(names, columns)}, default=str)
        key_bytes = None if key is None else str(key).encode()
        while True:
            try:
                producer.produce(t, value=value, key=key_bytes, on_delivery=on_delivery)
                break
            except BufferError:  # librdkafka's queue is full: let it drain
                producer.poll(0.05)
        produced += 1
        if rate:
            ahead = t0 + produced / rate - time.perf_counter()
            if ahead > 0.002:
                producer.poll(0)
                time.sleep(ahead)
        if produced % 10_000 == 0:
            producer.poll(0)
            progress.update(produced)
    remaining = producer.flush(60)
    progress.update(produced)
    if remaining or failed:
        raise ReplayError(f"the broker did not acknowledge {remaining + len(failed)} message(s) "
                          f"({'; '.join(failed[:3]) or 'flush timed out'}); the replay is incomplete. "
                          "Check the broker (`riskstream stack status`) and run again: the engine's "
                          "tables are keyed by event, so replaying twice stores each event once.")
    return ReplaySummary(data.stream, produced - labels, labels, 0, time.perf_counter() - t0)


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------
def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_replay(args: argparse.Namespace, settings: Settings | None = None) -> int:
    settings = settings or load_settings(getattr(args, "config", None))
    if args.stream not in STREAMS:
        raise ReplayError(f"unknown --stream {args.stream!r}; choose one of: {', '.join(STREAMS)}.")
    if args.label_delay and not args.label_column:
        raise ReplayError("--label-delay needs --label-column (the column that says which rows are fraud).")
    delay_ms = parse_duration(args.label_delay) if args.label_column else 0
    if args.label_column and not args.label_delay:
        raise ReplayError("--label-column needs --label-delay, e.g. --label-delay 7d "
                          "(chargebacks take days; a zero delay would leak the outcome).")
    if args.rate is not None and args.rate <= 0:
        raise ReplayError(f"--rate {args.rate}: expected events per second > 0.")
    if args.offline and args.rate:
        raise ReplayError("--rate paces messages to the broker; it has no meaning with --offline.")
    requested = getattr(args, "processes", None)
    if requested is not None and requested < 1:
        raise ReplayError(f"--processes {requested}: expected 1 or more (1 = this process only).")
    if requested is not None and not args.offline:
        raise ReplayError("--processes splits an --offline replay; online, the running workers split the "
                          "stream by partition (start more with `riskstream worker`).")
    processes = requested or default_processes()
    if not args.offline:
        settings.kafka_client_config()  # fail before reading a big file when there is no broker
    t0 = time.perf_counter()
    data = load_input(args.file, args.stream, parse_maps(args.map), settings=settings,
                      label_column=args.label_column, label_delay_ms=delay_ms, validate=args.offline)
    n_labels = len(data.labels.get("label_time", ()))
    late = int((data.labels["label_time"] > data.times_ms[-1]).sum()) if n_labels and data.n else 0
    _say(f"replay: {data.file_rows:,} rows of {data.path.name} as {args.stream}"
         + (f", {n_labels:,} chargeback labels {args.label_delay} later"
            f" ({late:,} fall after the last row and are emitted at the end)" if args.label_column else "")
         + (f", {len(data.dead):,} invalid rows dead-lettered" if data.dead else "")
         + f" (read in {time.perf_counter() - t0:.1f}s)")
    if args.offline:
        if args.stream != "transactions" and requested is not None and requested > 1:
            _say(f"replay: note: --processes splits transactions by card; --stream {args.stream} runs in one process.")
        summary = replay_offline(data, settings, processes=processes)
        written = ", ".join(f"{k} {v:,}" for k, v in sorted(summary.rows_written.items()))
        prof = ", ".join(f"{k} {v:.1f}s" for k, v in summary.profile.items())
        what = "transactions" if args.stream == "transactions" else "rows"
        across = f" in {summary.processes} processes" if summary.processes > 1 else ""
        print(f"riskstream replay --offline: {summary.rows:,} {what} in {summary.seconds:.1f}s "
              f"({summary.rate:,.0f} {what}/s{across}, up to every row in ClickHouse; engine start-up "
              f"{summary.profile['setup']:.1f}s and closing the ClickHouse client "
              f"{summary.profile['clickhouse_close']:.1f}s more), {summary.labels:,} labels learned, "
              f"{summary.dead_letters:,} dead letters.")
        print(f"ClickHouse rows written: {written or 'none'}.")
        if summary.processes > 1:
            print(f"Time by stage (labels to send: summed over the {summary.processes} replay processes; "
                  f"receive, clickhouse_wait, setup and clickhouse_close: this process): {prof}.")
        else:
            print(f"Time by stage: {prof}.")
    else:
        summary = replay_online(data, settings, rate=args.rate)
        print(f"riskstream replay: produced {summary.rows:,} {args.stream} and {summary.labels:,} labels in "
              f"{summary.seconds:.1f}s ({(summary.rows + summary.labels) / max(summary.seconds, 1e-9):,.0f} "
              f"messages/s){' paced at ' + format(args.rate, ',g') + '/s' if args.rate else ''}.")
        print("The workers decide them as they arrive (start one with `riskstream worker` if none runs).")
    print('Next: riskstream sql "SELECT decision, count() FROM decisions FINAL GROUP BY decision"\n'
          '      riskstream sql "SELECT error, count() FROM dead_letters FINAL GROUP BY error"')
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    try:
        return run_replay(args)
    except ReplayError as exc:
        print(f"riskstream replay: {exc}", file=sys.stderr)
        return 2


def register(sub) -> None:
    p = sub.add_parser(
        "replay", help="Replay a CSV/Parquet file in event-time order (to the topics, or --offline in-process).",
        description="Replay a recorded or simulated stream in event-time order (stable sort). The time column "
                    "(event_time; label_time for --stream labels) may hold epoch milliseconds (integers), "
                    "ISO-8601 text (no zone = UTC) or Parquet/Arrow timestamps. Online, rows go to the "
                    "stream's topic as JSON, keyed like live producers; --offline scores them in-process "
                    "and writes the results to ClickHouse.",
        epilog="Example: riskstream replay tx.parquet --stream transactions --label-column is_fraud "
               "--label-delay 7d --offline",
    )
    p.add_argument("file", help="a .csv or .parquet file")
    p.add_argument("--stream", required=True, help=f"what the rows are: {', '.join(STREAMS)}")
    p.add_argument("--map", action="append", default=[], metavar="SRC=DEST",
                   help="rename a column, e.g. --map TX_AMOUNT=amount --map CUSTOMER_ID=card_id (repeatable)")
    p.add_argument("--label-column", metavar="COL",
                   help="ground-truth column (1/true = fraud): each such row yields a chargeback label "
                        "--label-delay after it; COL is dropped from the transaction")
    p.add_argument("--label-delay", metavar="DURATION",
                   help="how long until the label is known, e.g. 30m, 12h, 7d. Labels that fall after the "
                        "last row are still emitted, at the end")
    p.add_argument("--offline", action="store_true",
                   help="no broker: run the engine in-process and write results to ClickHouse")
    p.add_argument("--processes", type=int, metavar="N",
                   help=f"--offline, --stream transactions: split the cards over N processes (default: one "
                        f"core fewer than there are, for the ClickHouse writer: {default_processes()} here; 1 = "
                        "this process only), the way a topic's "
                        "partitions split traffic over online workers. Each process has its own model state, "
                        "like N workers each owning a share of the partitions, so scores can differ slightly "
                        "from a 1-process run; card-level features are identical. Other streams run in one "
                        "process")
    p.add_argument("--rate", type=float, metavar="N",
                   help="online only: pace to N messages/s (open loop, for latency tests)")
    p.set_defaults(run=_cmd_replay)
