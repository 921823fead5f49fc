"""The stream registry: every input stream of the engine, declared once.

Each :class:`StreamSpec` says what a stream's events carry (required and optional columns),
how they are keyed and timed, how a record is validated, which ClickHouse table stores it and
which processor of the driver handles it. The decoder, the driver, the worker's agents, the
replay (file checks, keys, offline validation), the sink's tables and the docs all read it
from here; nothing else lists streams.

>>> spec = STREAMS["loan_applications"]
>>> spec.table, spec.key, spec.processor
('loan_applications', ('customer_id',), 'loans')
>>> [s for s in STREAMS if STREAMS[s].time_column == "label_time"]
['labels']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from riskstream.schemas.events import (
    LABELLED_STREAMS, account_event_row, label_row, loan_application_row, market_tick_row, position_row,
)
from riskstream.schemas.transactions import TRANSACTION_OPTIONAL


@dataclass(frozen=True)
class StreamSpec:
    """What one input stream is.

    ``required`` holds groups of columns: an event needs one column of each group (a
    transaction names its card by ``card_id`` or ``customer_id``). ``validate_row`` turns a
    decoded JSON object into the stored row or raises ``InvalidEvent``; transactions have none,
    as they are decoded straight into columns (``schemas.transactions.decode_transactions``).
    """

    name: str
    time_column: str
    required: tuple[tuple[str, ...], ...]
    optional: tuple[str, ...]
    key: tuple[str, ...]  # message key: the first of these columns an event has
    table: str  # the ClickHouse table its events are stored in
    processor: str  # the driver's processor for it (streams.processors)
    strings: tuple[str, ...] = ()  # text columns (ids like mcc "0742" keep their zeros in a CSV)
    validate_row: Callable[[dict, int], dict] | None = None
    # Outcomes on ``labels``: the column a label's event_id names, and the labels of a bad
    # and of a good outcome ("" when only bad ones are ever reported, as with chargebacks).
    outcome_id: str = ""
    outcome_labels: tuple[str, str] = ("", "")
    # Drained together in event time (by ``time_column``) with the other aligned streams when a
    # worker reads a backlog (``streams.alignment``): decisions, and the outcomes that teach
    # the models making them. Read as fetched, the demo's labels once came 17 days of
    # transactions late, and the fraud model decided nothing for 35 days.
    aligned: bool = False

    @property
    def columnar(self) -> bool:
        """Decoded straight into a columnar batch (the hot path) rather than into rows."""
        return self.validate_row is None

    @property
    def columns(self) -> tuple[str, ...]:
        return (*dict.fromkeys(c for group in self.required for c in group), *self.optional)


STREAMS: dict[str, StreamSpec] = {
    "transactions": StreamSpec(
        name="transactions",
        time_column="event_time",
        required=(("transaction_id",), ("event_time",), ("amount",), ("card_id", "customer_id"),
                  ("merchant_id", "terminal_id")),
        optional=tuple(c for c in (*TRANSACTION_OPTIONAL, "lat", "lon") if c not in ("customer_id", "terminal_id")),
        key=("card_id", "customer_id"),
        table="transactions",
        processor="transactions",
        strings=("transaction_id", "card_id", "merchant_id", *TRANSACTION_OPTIONAL),
        outcome_id="transaction_id",
        outcome_labels=("chargeback", ""),
        aligned=True,
    ),
    "labels": StreamSpec(
        name="labels",
        time_column="label_time",
        required=(("event_id",), ("label",), ("label_time",)),
        optional=("stream", "entity_id", "source", "merchant_id", "terminal_id", "event_time"),
        key=("entity_id",),
        table="labels",
        processor="labels",
        strings=("event_id", "stream", "label", "entity_id", "source", "merchant_id", "terminal_id"),
        validate_row=label_row,
        aligned=True,
    ),
    "market": StreamSpec(
        name="market",
        time_column="event_time",
        required=(("instrument",), ("event_time",), ("price",)),
        optional=("volume",),
        key=("instrument",),
        table="market_ticks",
        processor="market",
        strings=("instrument",),
        validate_row=market_tick_row,
    ),
    "positions": StreamSpec(
        name="positions",
        time_column="event_time",
        required=(("portfolio_id",), ("instrument",), ("event_time",), ("quantity",)),
        optional=("price", "desk"),
        key=("portfolio_id",),
        table="positions",
        processor="market",
        strings=("portfolio_id", "instrument", "desk"),
        validate_row=position_row,
    ),
    "loan_applications": StreamSpec(
        name="loan_applications",
        time_column="event_time",
        required=(("application_id",), ("event_time",), ("customer_id",)),
        optional=("amount", "income", "term_months", "existing_debt"),  # and any attribute (schemas.events)
        key=("customer_id",),
        table="loan_applications",
        processor="loans",
        strings=("application_id", "customer_id"),
        validate_row=loan_application_row,
        outcome_id="application_id",
        outcome_labels=("default", "repaid"),
        aligned=True,
    ),
    "account_events": StreamSpec(
        name="account_events",
        time_column="event_time",
        required=(("event_id",), ("event_time",), ("account_id",), ("kind",), ("amount",)),
        optional=("auth_id", "source"),
        key=("account_id",),
        table="account_events",
        processor="ledger",
        strings=("event_id", "account_id", "kind", "auth_id", "source"),
        validate_row=account_event_row,
    ),
}

__all__ = ["LABELLED_STREAMS", "STREAMS", "StreamSpec", "UnknownStream", "stream_spec"]


class UnknownStream(KeyError):
    def __str__(self) -> str:
        return f"unknown stream {self.args[0]!r}; the streams are: {', '.join(STREAMS)}"


def stream_spec(name: str) -> StreamSpec:
    try:
        return STREAMS[name]
    except KeyError:
        raise UnknownStream(name) from None
