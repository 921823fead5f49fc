"""Transactions decoded through Arrow's JSON reader: the path :func:`riskstream.schemas.
transactions.decode_columns` takes for batches of ``ARROW_DECODE_MIN_ROWS`` or more, checked as
columns with the same checks and reasons as the per-row validator (``transaction_checks``)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import orjson

from riskstream.schemas.events import DeadLetter, InvalidEvent
from riskstream.schemas.pan import PanTokenizer
from riskstream.schemas.transactions import (
    TRANSACTION_OPTIONAL, TransactionBatch, id_or, transaction_checks, transaction_row,
)

# Arrow's JSON reader parses a batch into columns in C++. Measured on the bench's messages,
# decode_transactions per transaction: 3.3-3.7 us against 4.9-5.5 for orjson's dicts checked
# column by column in Python, in batches of 5,000 (in a slow spell of the machine 5.6 against
# 6.9). But a batch costs it ~1-2 ms whatever its size (the reader's set-up, some 40 column
# operations): 1.9 ms for 30 rows where the orjson path takes 0.15, about even at 1,000-2,000
# rows. Smaller batches (a worker at a low rate) keep the orjson path.
ARROW_DECODE_MIN_ROWS = 2000


_ARROW_STRINGS = tuple(dict.fromkeys(("transaction_id", "card_id", "merchant_id", *TRANSACTION_OPTIONAL, "pan")))


def _arrow_options() -> tuple:
    """The JSON reader's options: built per batch (~12 µs, against a batch of 2,000 rows or
    more), so no module state is kept."""
    import pyarrow as pa
    import pyarrow.json as pj

    schema = pa.schema([(c, pa.string()) for c in _ARROW_STRINGS]
                       + [("event_time", pa.int64()), ("amount", pa.float64()),
                          ("lat", pa.float64()), ("lon", pa.float64())])
    return (pj.ReadOptions(use_threads=False, block_size=1 << 30),
            pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore", newlines_in_values=False))


def arrow_transactions(values: Sequence[bytes], tokenizer: PanTokenizer, topic: str,
                        partitions: Sequence[int] | None, offsets: Sequence[int] | None,
                        max_message_bytes: int, max_amount: float,
                        now_ms: int) -> tuple[TransactionBatch, list[DeadLetter]] | None:
    """The batch through Arrow's JSON reader, or None when the reader cannot take it whole.

    The reader is strict where it matters: a value of another JSON type than the column's (an
    id as a number, an ISO time, a numeric string), a duplicate key, a non-object or broken
    JSON fails the whole batch, which then takes the orjson path. What it reads is checked as
    columns; rows the checks cannot vouch for (out of range, too long, all-digit ids that may be
    card numbers, ``NaN``, which Arrow reads and orjson refuses) go through the per-row
    validator and replace their row. A card number in ``pan`` sends the batch to the orjson
    path, which tokenizes it."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as pj

    n = len(values)
    if None in values or max(map(len, values)) > max_message_bytes:
        return None
    blob = b"\n".join(values)
    if blob.count(b"\n") != n - 1:  # a message with a newline of its own
        return None
    read, parse = _arrow_options()
    try:
        table = pj.read_json(pa.py_buffer(blob), read_options=read, parse_options=parse)
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError):
        return None
    if table.num_rows != n or table.column("pan").null_count != n:  # '{..}{..}' in one message; PANs
        return None

    def text(name: str):
        return pc.fill_null(table.column(name).combine_chunks(), "")

    ids = {k: text(k) for k in ("transaction_id", "card_id", "merchant_id", *TRANSACTION_OPTIONAL)}

    strings = {"transaction_id": ids["transaction_id"], "card_id": id_or(ids["card_id"], ids["customer_id"]),
               "merchant_id": id_or(ids["merchant_id"], ids["terminal_id"])}
    strings.update({k: ids[k] for k in TRANSACTION_OPTIONAL})
    event_time = table.column("event_time").combine_chunks()
    time_ok = pc.is_valid(event_time).to_numpy(zero_copy_only=False)
    times = pc.fill_null(event_time, 0).to_numpy(zero_copy_only=False)
    amount = pc.fill_null(table.column("amount").combine_chunks(), math.nan).to_numpy(zero_copy_only=False)
    geo = {}
    slow = np.zeros(n, dtype=bool)
    for name in ("lat", "lon"):
        col = table.column(name).combine_chunks()
        geo[name] = pc.fill_null(col, math.nan).to_numpy(zero_copy_only=False)
        slow |= pc.fill_null(pc.is_nan(col), False).to_numpy(zero_copy_only=False)  # NaN: orjson refuses it
    for mask, _ in transaction_checks(ids, strings["card_id"], strings["merchant_id"], times, time_ok, amount, geo,
                                      max_amount, now_ms):
        slow |= mask
    # All-digit ids may be card numbers: the per-row validator tokenizes those.
    for name in ("transaction_id", "card_id", "merchant_id", "customer_id"):
        slow |= pc.utf8_is_digit(strings[name]).to_numpy(zero_copy_only=False)

    columns = [strings["transaction_id"].to_numpy(zero_copy_only=False), times,
               strings["card_id"].to_numpy(zero_copy_only=False),
               strings["merchant_id"].to_numpy(zero_copy_only=False), amount,
               geo["lat"], geo["lon"],
               *[strings[k].to_numpy(zero_copy_only=False) for k in TRANSACTION_OPTIONAL]]
    errors: dict[int, str] = {}
    if slow.any():  # numeric columns without nulls are Arrow's read-only buffers
        columns = [c if c.flags.writeable else c.copy() for c in columns]
    for i in np.flatnonzero(slow).tolist():
        try:
            row = transaction_row(orjson.loads(values[i]), tokenizer, max_amount, now_ms)
        except orjson.JSONDecodeError as exc:
            errors[i] = f"invalid JSON: {exc}"
            continue
        except InvalidEvent as exc:
            errors[i] = str(exc)
            continue
        for c, v in zip(columns, row):
            c[i] = v
    pos = np.flatnonzero([i not in errors for i in range(n)]) if errors else None
    part = np.asarray(partitions, dtype=np.int32) if partitions is not None else np.full(n, -1, dtype=np.int32)
    off = np.asarray(offsets, dtype=np.int64) if offsets is not None else np.full(n, -1, dtype=np.int64)
    batch = TransactionBatch(
        transaction_id=columns[0], event_time_ms=columns[1], card_id=columns[2], merchant_id=columns[3],
        amount=columns[4], lat=columns[5], lon=columns[6],
        optional={k: columns[7 + j] for j, k in enumerate(TRANSACTION_OPTIONAL)},
        partition=part, offset=off,
        # The ClickHouse blocks take these as they are, unless a row was replaced above.
        arrow=None if slow.any() else strings,
        source_row=np.arange(n),
    )
    if pos is not None:
        batch = batch.take(pos)
    dead = [DeadLetter(topic=topic, partition=partitions[i] if partitions is not None else -1,
                       offset=offsets[i] if offsets is not None else -1, error=errors[i],
                       payload=tokenizer.mask(values[i][:max_message_bytes]))
            for i in sorted(errors)]
    return batch, dead
