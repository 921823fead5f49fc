"""Reading a recorded stream for a replay: a CSV or Parquet file, renamed, checked against the
stream registry, sorted by event time, with labels made from a ground-truth column.

Labels from a ground-truth column (``--label-column is_fraud --label-delay 7d``) become
``chargeback`` label events at ``event_time + delay``, so nothing learns an outcome before the
bank would have known it. Offline, bad transactions become dead letters here, with the reason
the decoder would give; the chunks of the file then become the driver's batches.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import orjson

from riskstream.schemas.events import DeadLetter
from riskstream.schemas.pan import tokenize_pans
from riskstream.schemas.registry import STREAMS, StreamSpec
from riskstream.schemas.transactions import (
    TRANSACTION_OPTIONAL,
    TransactionBatch,
    constant_column,
    id_or,
    transaction_checks,
)
from riskstream.settings import Settings

DURATION_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
TRUTHY_STRINGS = frozenset({"1", "true", "t", "yes", "y"})


class ReplayError(Exception):
    """A problem with the command line or the file; the message says what to do."""



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


def truthy(column, positive: str | None = None) -> np.ndarray:
    """Rows where a ground-truth column is set: non-zero numbers, true, or 1/true/yes text;
    with ``positive``, the rows whose value is that text (any case)."""
    import pyarrow as pa

    if positive is not None:
        wanted = positive.strip().lower()
        return np.asarray([str(v).strip().lower() == wanted for v in column.to_pylist()], dtype=bool)
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
               now_ms: int | None = None, validate: bool = True, label_positive: str | None = None) -> ReplayInput:
    """Read, rename, check and sort a file; with ``validate`` (offline) bad transactions become
    dead letters here, as the decoder would make them."""
    if stream not in STREAMS:
        raise ReplayError(f"unknown --stream {stream!r}; choose one of: {', '.join(STREAMS)}.")
    spec = STREAMS[stream]
    if label_column and not spec.outcome_id:
        with_outcomes = ", ".join(name for name, s in STREAMS.items() if s.outcome_id)
        raise ReplayError(f"--label-column: {stream} events have no outcomes ({with_outcomes} do; "
                          "replay a labels file with --stream labels).")
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
        flagged = truthy(table.column(label_column), label_positive)
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
        out.labels = label_events(spec, out.columns, out.times_ms, flagged, label_delay_ms)
    return out


def _column_values(column) -> np.ndarray:
    import pyarrow as pa

    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column.to_numpy(zero_copy_only=False).astype(object, copy=False)
    return column.to_numpy(zero_copy_only=False)


def label_events(spec, columns: dict[str, np.ndarray], times_ms: np.ndarray, flagged: np.ndarray,
                 delay_ms: int) -> dict[str, np.ndarray]:
    """Outcome labels at ``event_time + delay``, by label time: for the flagged rows (a
    chargeback, a default), and for the others too where the stream reports good outcomes
    (a repaid loan)."""
    bad, good = spec.outcome_labels
    rows = np.arange(len(times_ms)) if good else np.flatnonzero(flagged)
    label_time = times_ms[rows] + delay_ms
    order = np.argsort(label_time, kind="stable")
    rows, label_time = rows[order], label_time[order]
    m = len(rows)
    # Keyed like the event (a transaction by card, else customer), so the label reaches the
    # partition that holds the event's state.
    entity = np.full(len(times_ms), "", dtype=object)
    for name in reversed(spec.key):
        if name in columns:
            values = np.asarray(columns[name], dtype=object)
            entity = np.where((values != "") & np.not_equal(values, None), values, entity)
    positive = np.asarray(flagged, dtype=bool)[rows]
    return {
        "event_id": np.asarray(columns[spec.outcome_id], dtype=object)[rows].astype(str).astype(object),
        "stream": np.full(m, spec.name, dtype=object),
        "label": np.where(positive, bad, good).astype(object),
        "is_positive": positive.astype(np.int8),
        "label_time": label_time.astype(np.int64),
        "entity_id": entity[rows].astype(object),
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

    from riskstream.schemas.pan import tokenizer_for

    tokenizer = tokenizer_for(settings)
    records = table.take(pa.array(rows)).to_pylist()
    topic = settings.topic(stream)
    return [DeadLetter(topic, -1, int(order[i]), f"replay: {reasons[i]}",
                       tokenizer.mask(orjson.dumps(rec, default=str, option=orjson.OPT_SERIALIZE_NUMPY)),
                       received_at_ms=now_ms)
            for i, rec in zip(rows.tolist(), records)]



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


def row_chunks(data: ReplayInput, chunk_rows: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """(start, end, labels due) for a row-shaped stream: chunks of up to ``chunk_rows`` rows,
    each ended early where an outcome label comes due, so that a label is learned before the
    first row after its time is decided, as a worker reading both topics live would. Labels
    after the last row come last, with ``start == end == n``."""
    labels = DueLabels(data.labels.get("label_time", np.zeros(0, dtype=np.int64)))
    n, start = data.n, 0
    while start < n:
        due = labels.before(int(data.times_ms[start]))
        end = min(n, start + chunk_rows)
        if labels.handed < len(labels.label_time):  # the next label ends the chunk at its time
            cut = int(np.searchsorted(data.times_ms, labels.label_time[labels.handed], side="right"))
            end = max(start + 1, min(end, cut))
        yield start, end, due
        start = end
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


