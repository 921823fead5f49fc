"""Input events: time units, validation of the row-shaped streams, and dead letters.

Transactions are decoded straight into columns (``schemas.transactions``), because they are
the hot path. The lower-volume streams (market ticks, positions, loan applications, labels)
are validated here into plain dict rows, each by its validator in the stream registry.

Anything that does not pass becomes a :class:`DeadLetter` carrying the reason, where the
record came from and its original bytes, with card numbers masked (``schemas.pan``): a
malformed record may still carry a PAN, and PANs are never stored in clear, not even in the
dead-letter table.

>>> from riskstream.schemas.pan import PanTokenizer
>>> rows, dead = decode_rows(market_tick_row, [(b'{"instrument": "ACME", "event_time": 1700000000000, '
...     b'"price": 12.5}', 0, 7), (b'{"instrument": "ACME"}', 0, 8)], tokenizer=PanTokenizer(b"k" * 32))
>>> rows[0]["price"], dead[0].offset, dead[0].error
(12.5, 8, "missing required field 'event_time'")
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

import orjson

from riskstream.schemas.pan import PanTokenizer

# Event times before this are absurd for a live risk engine (and usually a seconds/ms mix-up).
MIN_EVENT_TIME_MS = 946_684_800_000  # 2000-01-01
# Clocks drift; a day into the future is already a broken producer.
MAX_FUTURE_MS = 86_400_000
MAX_ID_LENGTH = 128

HOUR_MS = 3_600_000  # event times are epoch milliseconds
DAY_MS = 24 * HOUR_MS
# Streams whose outcomes arrive later on ``labels`` (a label's ``stream`` field names one).
LABELLED_STREAMS = ("transactions", "loan_applications")


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

    def encoded(self) -> bytes:
        """The ``dead_letters`` table row and topic message, as every publisher sends it."""
        return orjson.dumps({**self.row(), "received_at": self.received_at_ms / 1000.0})


def json_documents(records: Iterable[dict], chunk: int = 10_000, **dumps_options: Any) -> list[bytes]:
    """``orjson.dumps`` of each record, for lists that are kept (a run's input, a demo stream).

    Each document orjson returns sits in its own allocation, written into a 1 KB buffer and
    shrunk in place, and the heap cannot reuse what the shrink gave back: kept by the hundred
    thousand they pinned ~7.7 KB of memory each for 300-byte documents (a bench's 570,000
    messages: 4.7 GB of RSS). So each chunk is copied into compact objects and then dropped,
    and its holes serve the next chunk. orjson writes no raw newline (without OPT_INDENT_2),
    so a newline join and split is an exact copy."""
    if dumps_options.get("option", 0) & orjson.OPT_INDENT_2:
        raise ValueError("json_documents: indented documents contain newlines")
    dumps = orjson.dumps
    out: list[bytes] = []
    pending: list[bytes] = []
    for rec in records:
        pending.append(dumps(rec, **dumps_options))
        if len(pending) >= chunk:
            out.extend(b"\n".join(pending).split(b"\n"))
            pending = []
    if pending:
        out.extend(b"\n".join(pending).split(b"\n"))
    return out


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


def read_id(obj: dict[str, Any], name: str, required: bool = True) -> str:
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


def read_number(obj: dict[str, Any], name: str, lo: float, hi: float, required: bool = True) -> float:
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


def missing_field(name: str) -> Any:
    raise InvalidEvent(f"missing required field '{name}'")


# --------------------------------------------------------------------------------------
# Lower-volume streams: dict rows
# --------------------------------------------------------------------------------------
LABEL_VALUES = {
    "fraud": 1, "chargeback": 1, "analyst_fraud": 1, "default": 1,
    "legit": 0, "analyst_legit": 0, "repaid": 0,
}


def market_tick_row(obj: dict, now_ms: int) -> dict:
    return {
        "instrument": read_id(obj, "instrument"),
        "event_time": parse_event_time(obj.get("event_time") if "event_time" in obj else missing_field("event_time"), now_ms),
        "price": read_number(obj, "price", 1e-12, 1e12),
        "volume": _zero_nan(read_number(obj, "volume", 0.0, 1e15, required=False)),
    }


def position_row(obj: dict, now_ms: int) -> dict:
    return {
        "portfolio_id": read_id(obj, "portfolio_id"),
        "instrument": read_id(obj, "instrument"),
        "event_time": parse_event_time(obj.get("event_time") if "event_time" in obj else missing_field("event_time"), now_ms),
        "quantity": read_number(obj, "quantity", -1e15, 1e15),
        "price": _zero_nan(read_number(obj, "price", 0.0, 1e12, required=False)),
        "desk": read_id(obj, "desk", required=False),
    }


# The applicant and loan attributes the engine itself knows (policy, limits, derived ratios);
# every other field of an application is an attribute it passes to the model as it comes.
LOAN_KNOWN = {"amount": (1.0, 1e9), "income": (0.0, 1e10), "term_months": (1.0, 600.0), "existing_debt": (0.0, 1e10)}
MAX_ATTRIBUTES = 200
MAX_ATTRIBUTE_TEXT = 200


def loan_application_row(obj: dict, now_ms: int) -> dict:
    """An application: its id, time and customer, the known amounts (NaN when absent) and
    ``attributes``: every other field, a number or a short text (missing ones left out)."""
    row = {
        "application_id": read_id(obj, "application_id"),
        "event_time": parse_event_time(obj.get("event_time") if "event_time" in obj else missing_field("event_time"), now_ms),
        "customer_id": read_id(obj, "customer_id"),
    }
    for name, (lo, hi) in LOAN_KNOWN.items():
        row[name] = read_number(obj, name, lo, hi, required=False)
    attributes: dict[str, float | str] = {}
    for name, value in obj.items():
        if name in row or value is None or value == "":
            continue
        if len(name) > 64:
            raise InvalidEvent(f"attribute name {name[:40]!r}... is longer than 64 characters")
        if isinstance(value, bool):
            attributes[name] = float(value)
        elif isinstance(value, (int, float)):
            if not math.isfinite(value):
                continue  # NaN is how a CSV says missing
            attributes[name] = float(value)
        elif isinstance(value, str):
            if len(value) > MAX_ATTRIBUTE_TEXT:
                raise InvalidEvent(f"attribute '{name}' is longer than {MAX_ATTRIBUTE_TEXT} characters")
            attributes[name] = value
        else:
            raise InvalidEvent(f"attribute '{name}' must be a number or a text, got {type(value).__name__}")
    if len(attributes) > MAX_ATTRIBUTES:
        raise InvalidEvent(f"{len(attributes)} attributes, more than {MAX_ATTRIBUTES}")
    row["attributes"] = attributes
    return row


ACCOUNT_EVENT_KINDS = ("settlement", "reversal", "repayment", "limit_change")


def account_event_row(obj: dict, now_ms: int) -> dict:
    """A credit line's event: a settlement or reversal of an authorisation (``auth_id``), a
    repayment, or a new limit (``amount``)."""
    kind = read_id(obj, "kind")
    if kind not in ACCOUNT_EVENT_KINDS:
        raise InvalidEvent(f"'kind' must be one of {', '.join(ACCOUNT_EVENT_KINDS)}, got {kind!r}")
    auth_id = read_id(obj, "auth_id", required=kind in ("settlement", "reversal"))
    return {
        "event_id": read_id(obj, "event_id"),
        "event_time": parse_event_time(obj.get("event_time") if "event_time" in obj else missing_field("event_time"), now_ms),
        "account_id": read_id(obj, "account_id"),
        "kind": kind,
        "amount": read_number(obj, "amount", 0.0, 1e10),  # kept in cents, exact in the ledger's doubles
        "auth_id": auth_id,
        "source": read_id(obj, "source", required=False),
    }


def label_row(obj: dict, now_ms: int) -> dict:
    label = read_id(obj, "label")
    if label not in LABEL_VALUES:
        raise InvalidEvent(f"'label' must be one of {sorted(LABEL_VALUES)}, got {label!r}")
    stream = read_id(obj, "stream", required=False) or "transactions"
    if stream not in LABELLED_STREAMS:
        raise InvalidEvent(f"'stream' must be one of {', '.join(LABELLED_STREAMS)}, got {stream!r}")
    label_time = parse_event_time(obj.get("label_time") if "label_time" in obj else missing_field("label_time"), now_ms)
    # Chargeback records carry the merchant, terminal and transaction date: with them a
    # confirmed fraud also counts for the merchant's and terminal's fraud-rate features.
    event_time = obj.get("event_time")
    return {
        "event_id": read_id(obj, "event_id"),
        "stream": stream,
        "label": label,
        "is_positive": LABEL_VALUES[label],
        "label_time": label_time,
        "entity_id": read_id(obj, "entity_id", required=False),
        "source": read_id(obj, "source", required=False),
        "merchant_id": read_id(obj, "merchant_id", required=False),
        "terminal_id": read_id(obj, "terminal_id", required=False),
        "event_time": parse_event_time(event_time, now_ms) if event_time is not None else label_time,
    }


def _zero_nan(x: float) -> float:
    return 0.0 if math.isnan(x) else x


def decode_rows(
    validate: Callable[[dict, int], dict],
    records: Iterable[tuple[bytes | None, int, int]],
    *,
    tokenizer: PanTokenizer,
    topic: str | None = None,
    max_message_bytes: int = 65536,
    now_ms: int | None = None,
    partitions_out: list[int] | None = None,
) -> tuple[list[dict], list[DeadLetter]]:
    """Validate (value, partition, offset) records of a non-transaction stream with its
    registry entry's ``validate_row``; ``topic`` names where bad records came from. With
    ``partitions_out``, each good row's partition is appended to it."""
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
            good.append(tokenizer.tokenize_row(validate(obj, now_ms)))
            if partitions_out is not None:
                partitions_out.append(partition)
        except InvalidEvent as exc:
            dead.append(DeadLetter(topic or "", partition, offset, str(exc),
                                   tokenizer.mask((raw or b"")[:max_message_bytes])))
    return good, dead
