"""Input event schemas: decoding and validation of every input stream.

Transactions are decoded straight into a columnar :class:`TransactionBatch` (numpy arrays),
because they are the hot path. The lower-volume streams (market ticks, positions, loan
applications, labels) are validated into plain dict rows.

Anything that does not pass becomes a :class:`DeadLetter` carrying the reason, where the
record came from and its original bytes, with card numbers masked: a malformed record may
still carry a PAN, and PANs are never stored in clear, not even in the dead-letter table.

>>> tok = PanTokenizer(b"k" * 32)
>>> batch, dead = decode_transactions(
...     [b'{"transaction_id":"t1","event_time":1700000000000,"pan":"4111111111111111",'
...      b'"merchant_id":"m1","amount":12.5}', b'not json'],
...     tokenizer=tok, topic="transactions")
>>> batch.n, batch.card_id[0].startswith("tok_"), dead[0].error.startswith("invalid JSON")
(1, True, True)
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import orjson

# Event times before this are absurd for a live risk engine (and usually a seconds/ms mix-up).
MIN_EVENT_TIME_MS = 946_684_800_000  # 2000-01-01
# Clocks drift; a day into the future is already a broken producer.
MAX_FUTURE_MS = 86_400_000
MAX_ID_LENGTH = 128

TRANSACTION_OPTIONAL = ("customer_id", "terminal_id", "currency", "country", "channel", "mcc",
                        "device_id", "ip", "account_id")


@dataclass(slots=True)
class DeadLetter:
    topic: str
    partition: int
    offset: int
    error: str
    payload: bytes
    received_at_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    def row(self) -> dict[str, Any]:
        return {
            "received_at": self.received_at_ms,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "error": self.error,
            "payload": self.payload.decode("utf-8", errors="replace"),
        }


class PanTokenizer:
    """Keyed hash of card numbers: the same PAN always maps to the same token, and the token
    cannot be reversed without the key."""

    _pan_run = re.compile(rb"(?<!\d)\d{13,19}(?!\d)")

    def __init__(self, key: bytes):
        if len(key) < 16:
            raise ValueError("PAN tokenization key must be at least 16 bytes")
        self._key = key

    def token(self, pan: str) -> str:
        digest = hmac.new(self._key, pan.encode(), hashlib.sha256).hexdigest()
        return "tok_" + digest[:24]

    def mask(self, payload: bytes) -> bytes:
        """Replace every Luhn-valid 13-19 digit run with its token."""

        def repl(m: re.Match[bytes]) -> bytes:
            digits = m.group(0).decode()
            return self.token(digits).encode() if luhn_valid(digits) else m.group(0)

        return self._pan_run.sub(repl, payload)


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def looks_like_pan(value: str) -> bool:
    return 13 <= len(value) <= 19 and value.isdigit() and luhn_valid(value)


class InvalidEvent(ValueError):
    """One record's reason for the dead-letter queue."""


def parse_event_time(value: Any, now_ms: int | None = None) -> int:
    """Epoch milliseconds from an int/float (ms) or an ISO-8601 string."""
    if isinstance(value, bool):
        raise InvalidEvent("event_time must be epoch milliseconds or ISO-8601, got a boolean")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise InvalidEvent("event_time is not finite")
        ms = int(value)
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidEvent(f"event_time {value[:40]!r} is not ISO-8601 nor epoch milliseconds") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        ms = int(dt.timestamp() * 1000)
    else:
        raise InvalidEvent(f"event_time must be epoch milliseconds or ISO-8601, got {type(value).__name__}")
    if ms < MIN_EVENT_TIME_MS:
        raise InvalidEvent(f"event_time {ms} is before 2000-01-01 (seconds instead of milliseconds?)")
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    if ms > now_ms + MAX_FUTURE_MS:
        raise InvalidEvent(f"event_time {ms} is more than a day in the future")
    return ms


def _id(obj: dict[str, Any], name: str, required: bool = True) -> str:
    value = obj.get(name)
    if value is None or value == "":
        if required:
            raise InvalidEvent(f"missing required field '{name}'")
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidEvent(f"'{name}' must be a string, got {type(value).__name__}")
    value = str(value)
    if len(value) > MAX_ID_LENGTH:
        raise InvalidEvent(f"'{name}' is longer than {MAX_ID_LENGTH} characters")
    return value


def _number(obj: dict[str, Any], name: str, lo: float, hi: float, required: bool = True) -> float:
    value = obj.get(name)
    if value is None:
        if required:
            raise InvalidEvent(f"missing required field '{name}'")
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise InvalidEvent(f"'{name}' must be a number, got {value[:40]!r}") from None
        else:
            raise InvalidEvent(f"'{name}' must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < lo or value > hi:
        raise InvalidEvent(f"'{name}' = {value} is outside [{lo:g}, {hi:g}]")
    return float(value)


# --------------------------------------------------------------------------------------
# Transactions: columnar
# --------------------------------------------------------------------------------------
@dataclass
class TransactionBatch:
    """A columnar batch of valid transactions. ``card_id`` is the entity the card rules and
    limits apply to: the card token, else the customer id."""

    transaction_id: np.ndarray  # object (str)
    event_time_ms: np.ndarray  # int64
    card_id: np.ndarray  # object (str), tokenized when it was a PAN
    merchant_id: np.ndarray  # object (str): merchant, else terminal
    amount: np.ndarray  # float64
    lat: np.ndarray  # float64, NaN when absent
    lon: np.ndarray  # float64, NaN when absent
    optional: dict[str, np.ndarray]  # TRANSACTION_OPTIONAL -> object arrays, "" when absent
    partition: np.ndarray  # int32, -1 when not from Kafka
    offset: np.ndarray  # int64, -1 when not from Kafka

    @property
    def n(self) -> int:
        return len(self.amount)

    def column(self, name: str) -> np.ndarray:
        if name in self.optional:
            return self.optional[name]
        return getattr(self, name)

    @classmethod
    def from_columns(cls, columns: dict[str, Sequence[Any]], tokenizer: PanTokenizer | None = None) -> "TransactionBatch":
        """Build from already-valid columns (simulator, Parquet replay, tests)."""
        n = len(columns["amount"])

        def obj(name: str) -> np.ndarray:
            if name not in columns:
                return np.full(n, "", dtype=object)
            return np.asarray([("" if v is None else str(v)) for v in columns[name]], dtype=object)

        card = obj("card_id") if "card_id" in columns else obj("customer_id")
        if tokenizer is not None:
            card = np.asarray([tokenizer.token(c) if looks_like_pan(c) else c for c in card], dtype=object)
        merchant = obj("merchant_id") if "merchant_id" in columns else obj("terminal_id")
        return cls(
            transaction_id=obj("transaction_id"),
            event_time_ms=np.asarray(columns["event_time"], dtype=np.int64),
            card_id=card,
            merchant_id=merchant,
            amount=np.asarray(columns["amount"], dtype=np.float64),
            lat=np.asarray(columns.get("lat", np.full(n, np.nan)), dtype=np.float64),
            lon=np.asarray(columns.get("lon", np.full(n, np.nan)), dtype=np.float64),
            optional={k: obj(k) for k in TRANSACTION_OPTIONAL},
            partition=np.full(n, -1, dtype=np.int32),
            offset=np.full(n, -1, dtype=np.int64),
        )

    def take(self, index: np.ndarray) -> "TransactionBatch":
        return TransactionBatch(
            transaction_id=self.transaction_id[index],
            event_time_ms=self.event_time_ms[index],
            card_id=self.card_id[index],
            merchant_id=self.merchant_id[index],
            amount=self.amount[index],
            lat=self.lat[index],
            lon=self.lon[index],
            optional={k: v[index] for k, v in self.optional.items()},
            partition=self.partition[index],
            offset=self.offset[index],
        )


def _transaction_row(obj: Any, tokenizer: PanTokenizer, max_amount: float, now_ms: int) -> tuple:
    if not isinstance(obj, dict):
        raise InvalidEvent(f"expected a JSON object, got {type(obj).__name__}")
    tid = _id(obj, "transaction_id")
    ts = parse_event_time(obj.get("event_time") if "event_time" in obj else _missing("event_time"), now_ms)
    pan = obj.get("pan")
    if pan is not None:
        pan = str(pan).replace(" ", "").replace("-", "")
        if not (12 <= len(pan) <= 19 and pan.isdigit()):
            raise InvalidEvent("'pan' must be 12-19 digits")
        card = tokenizer.token(pan)
    else:
        card = _id(obj, "card_id", required=False) or _id(obj, "customer_id", required=False)
        if not card:
            raise InvalidEvent("missing required field: one of 'card_id', 'customer_id' or 'pan'")
        if looks_like_pan(card):
            card = tokenizer.token(card)
    merchant = _id(obj, "merchant_id", required=False) or _id(obj, "terminal_id", required=False)
    if not merchant:
        raise InvalidEvent("missing required field: one of 'merchant_id' or 'terminal_id'")
    amount = _number(obj, "amount", 0.0, max_amount)
    lat = _number(obj, "lat", -90.0, 90.0, required=False)
    lon = _number(obj, "lon", -180.0, 180.0, required=False)
    opts = tuple(_id(obj, k, required=False) for k in TRANSACTION_OPTIONAL)
    if opts[0] and looks_like_pan(opts[0]):  # customer_id holding a PAN
        opts = (tokenizer.token(opts[0]),) + opts[1:]
    return (tid, ts, card, merchant, amount, lat, lon) + opts


def _missing(name: str) -> Any:
    raise InvalidEvent(f"missing required field '{name}'")


def decode_transactions(
    values: Sequence[bytes],
    *,
    tokenizer: PanTokenizer,
    topic: str = "transactions",
    partitions: Sequence[int] | None = None,
    offsets: Sequence[int] | None = None,
    max_message_bytes: int = 65536,
    max_amount: float = 10_000_000.0,
    now_ms: int | None = None,
) -> tuple[TransactionBatch, list[DeadLetter]]:
    """Decode raw Kafka values into a columnar batch plus dead letters, in one pass."""
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    rows: list[tuple] = []
    keep_pos: list[int] = []
    dead: list[DeadLetter] = []
    loads = orjson.loads
    for i, raw in enumerate(values):
        try:
            if raw is None:
                raise InvalidEvent("empty message (null value)")
            if len(raw) > max_message_bytes:
                raise InvalidEvent(f"oversized message: {len(raw)} bytes > {max_message_bytes}")
            try:
                obj = loads(raw)
            except orjson.JSONDecodeError as exc:
                raise InvalidEvent(f"invalid JSON: {exc}") from None
            rows.append(_transaction_row(obj, tokenizer, max_amount, now_ms))
            keep_pos.append(i)
        except InvalidEvent as exc:
            dead.append(
                DeadLetter(
                    topic=topic,
                    partition=partitions[i] if partitions is not None else -1,
                    offset=offsets[i] if offsets is not None else -1,
                    error=str(exc),
                    payload=tokenizer.mask((raw or b"")[:max_message_bytes]),
                )
            )
    return _rows_to_batch(rows, keep_pos, partitions, offsets), dead


def _rows_to_batch(rows: list[tuple], keep_pos: list[int], partitions, offsets) -> TransactionBatch:
    n = len(rows)
    if n:
        cols = list(zip(*rows))
    else:
        cols = [() for _ in range(7 + len(TRANSACTION_OPTIONAL))]
    pos = np.asarray(keep_pos, dtype=np.int64)
    return TransactionBatch(
        transaction_id=np.asarray(cols[0], dtype=object),
        event_time_ms=np.asarray(cols[1], dtype=np.int64),
        card_id=np.asarray(cols[2], dtype=object),
        merchant_id=np.asarray(cols[3], dtype=object),
        amount=np.asarray(cols[4], dtype=np.float64),
        lat=np.asarray(cols[5], dtype=np.float64),
        lon=np.asarray(cols[6], dtype=np.float64),
        optional={k: np.asarray(cols[7 + j], dtype=object) for j, k in enumerate(TRANSACTION_OPTIONAL)},
        partition=(np.asarray(partitions, dtype=np.int32)[pos] if partitions is not None and n
                   else np.full(n, -1, dtype=np.int32)),
        offset=(np.asarray(offsets, dtype=np.int64)[pos] if offsets is not None and n
                else np.full(n, -1, dtype=np.int64)),
    )


# --------------------------------------------------------------------------------------
# Lower-volume streams: dict rows
# --------------------------------------------------------------------------------------
LABEL_VALUES = {
    "fraud": 1, "chargeback": 1, "analyst_fraud": 1, "default": 1,
    "legit": 0, "analyst_legit": 0, "repaid": 0,
}


def _market_tick(obj: dict, now_ms: int) -> dict:
    return {
        "instrument": _id(obj, "instrument"),
        "event_time": parse_event_time(obj.get("event_time") if "event_time" in obj else _missing("event_time"), now_ms),
        "price": _number(obj, "price", 1e-12, 1e12),
        "volume": _zero_nan(_number(obj, "volume", 0.0, 1e15, required=False)),
    }


def _position(obj: dict, now_ms: int) -> dict:
    return {
        "portfolio_id": _id(obj, "portfolio_id"),
        "instrument": _id(obj, "instrument"),
        "event_time": parse_event_time(obj.get("event_time") if "event_time" in obj else _missing("event_time"), now_ms),
        "quantity": _number(obj, "quantity", -1e15, 1e15),
        "price": _zero_nan(_number(obj, "price", 0.0, 1e12, required=False)),
    }


def _loan_application(obj: dict, now_ms: int) -> dict:
    return {
        "application_id": _id(obj, "application_id"),
        "event_time": parse_event_time(obj.get("event_time") if "event_time" in obj else _missing("event_time"), now_ms),
        "customer_id": _id(obj, "customer_id"),
        "amount": _number(obj, "amount", 1.0, 1e9),
        "income": _number(obj, "income", 0.0, 1e10),
        "term_months": int(_number(obj, "term_months", 1, 600)),
        "existing_debt": _zero_nan(_number(obj, "existing_debt", 0.0, 1e10, required=False)),
        "credit_score": _zero_nan(_number(obj, "credit_score", 0.0, 1000.0, required=False)),
    }


def _label(obj: dict, now_ms: int) -> dict:
    label = _id(obj, "label")
    if label not in LABEL_VALUES:
        raise InvalidEvent(f"'label' must be one of {sorted(LABEL_VALUES)}, got {label!r}")
    stream = _id(obj, "stream", required=False) or "transactions"
    if stream not in ("transactions", "loan_applications"):
        raise InvalidEvent(f"'stream' must be transactions or loan_applications, got {stream!r}")
    return {
        "event_id": _id(obj, "event_id"),
        "stream": stream,
        "label": label,
        "is_positive": LABEL_VALUES[label],
        "label_time": parse_event_time(obj.get("label_time") if "label_time" in obj else _missing("label_time"), now_ms),
        "entity_id": _id(obj, "entity_id", required=False),
        "source": _id(obj, "source", required=False),
    }


def _zero_nan(x: float) -> float:
    return 0.0 if math.isnan(x) else x


ROW_VALIDATORS: dict[str, Callable[[dict, int], dict]] = {
    "market": _market_tick,
    "positions": _position,
    "loan_applications": _loan_application,
    "labels": _label,
}


def decode_rows(
    stream: str,
    records: Iterable[tuple[bytes | None, int, int]],
    *,
    tokenizer: PanTokenizer,
    topic: str | None = None,
    max_message_bytes: int = 65536,
    now_ms: int | None = None,
) -> tuple[list[dict], list[DeadLetter]]:
    """Validate (value, partition, offset) records of a non-transaction stream."""
    validate = ROW_VALIDATORS[stream]
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    good: list[dict] = []
    dead: list[DeadLetter] = []
    for raw, partition, offset in records:
        try:
            if raw is None:
                raise InvalidEvent("empty message (null value)")
            if len(raw) > max_message_bytes:
                raise InvalidEvent(f"oversized message: {len(raw)} bytes > {max_message_bytes}")
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise InvalidEvent(f"invalid JSON: {exc}") from None
            if not isinstance(obj, dict):
                raise InvalidEvent(f"expected a JSON object, got {type(obj).__name__}")
            good.append(validate(obj, now_ms))
        except InvalidEvent as exc:
            dead.append(DeadLetter(topic or stream, partition, offset, str(exc),
                                   tokenizer.mask((raw or b"")[:max_message_bytes])))
    return good, dead
