"""What a batch produces, and the one place that hands it to a publisher.

Every processor returns :class:`Outputs`; :func:`publish` encodes them once and hands them to
whichever publisher the driver was given (``sinks.publisher.Publisher``): Kafka topics and
Redis in a worker, ClickHouse directly in an offline replay, a recording in tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from riskstream.schemas.events import DeadLetter
from riskstream.sinks.publisher import Publisher
from riskstream.streams.pipeline import ScoredBatch, encode_outputs

TIME_FIELDS = ("event_time", "label_time")  # epoch ms in rows; seconds in ClickHouse's JSON


@dataclass
class Outputs:
    """One batch's results.

    ``scored`` is a scored transaction batch (columnar; its decisions, alerts and limits are
    encoded from it). The other fields are row-shaped: ``decisions`` (one per decided event
    of a row stream), ``alerts``, ``limits`` (controls), ``rows`` (table -> rows to store,
    event times in ms) and ``dead`` (rejected records)."""

    stream: str
    scored: ScoredBatch | None = None
    decisions: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    limits: list[dict[str, Any]] = field(default_factory=list)
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    dead: list[DeadLetter] = field(default_factory=list)
    learned: int = 0  # labels the models learned while this batch was processed

    @property
    def decided(self) -> int:
        return (self.scored.n if self.scored is not None else 0) + len(self.decisions)

    def add(self, other: "Outputs") -> "Outputs":
        """Fold ``other`` (row-shaped) into this one; returns self."""
        if other.scored is not None:
            raise ValueError("a scored batch is not folded into another batch's outputs")
        self.decisions += other.decisions
        self.alerts += other.alerts
        self.limits += other.limits
        for table, rows in other.rows.items():
            self.rows.setdefault(table, []).extend(rows)
        self.dead += other.dead
        self.learned += other.learned
        return self


def rows_for_table(rows: list[dict]) -> list[bytes]:
    """Validated dict rows -> JSON rows with times as seconds (how ClickHouse reads them)."""
    out = []
    for r in rows:
        if any(f in r for f in TIME_FIELDS):
            r = dict(r)
            for f in TIME_FIELDS:
                if f in r:
                    r[f] = r[f] / 1000.0
        out.append(orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY))
    return out


def _keyed(items: list[dict[str, Any]]) -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
    values = [orjson.dumps(x, option=orjson.OPT_SERIALIZE_NUMPY) for x in items]
    return values, [(str(x["entity_id"]).encode(), v) for x, v in zip(items, values)]


def publish(outputs: Outputs, publisher: Publisher) -> None:
    """Hand one batch's outputs to ``publisher`` (no flush: the caller decides when)."""
    topics = getattr(publisher, "publishes_topics", True)
    scored = outputs.scored
    if scored is not None and scored.n:
        enc = encode_outputs(scored, topics=topics, arrow_tables=getattr(publisher, "takes_arrow_tables", False))
        if enc.decisions:
            publisher.send("decisions", enc.decisions)
        if enc.alerts:
            publisher.send("alerts", enc.alerts)
        if enc.limits:
            publisher.send("limits", enc.limits)
            publisher.limits(enc.redis_limits)
        for table, rows in enc.sink_rows.items():
            publisher.sink(table, rows)
        for table, blocks in enc.sink_arrow.items():
            publisher.sink_arrow(table, blocks, scored.n)
    for name, items in (("decisions", outputs.decisions), ("alerts", outputs.alerts), ("limits", outputs.limits)):
        if not items:
            continue
        values, messages = _keyed(items)
        if topics:
            publisher.send(name, messages)
        if name == "limits":
            publisher.limits(items)
        publisher.sink(name, values)
    for table, rows in outputs.rows.items():
        publisher.sink(table, rows_for_table(rows))
    publisher.dead_letters(outputs.dead)
