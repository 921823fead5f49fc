"""Partitions drained together in event time: transactions, labels and loan applications
(the streams the registry marks ``aligned``), each by its own time column.

A worker draining a backlog (after an outage, a replay sent to the broker, the demo, which
produces weeks of traffic at once) gets whatever the broker hands it: a fetch brings about 1 MB
of one partition, which at a few thousand transactions a day is days of event time, and the
partitions drift days apart. Everything that goes by event time then goes by the slowest
partition: labels are learned, and decisions mature as legit, only once the watermark has
passed them (``streams.clock``). Meanwhile the partitions ahead are decided by a model that has
learned nothing of those days. Seen in the demo: 4 partitions days apart, and its fraud model
still warming up on day 11 of 28 for want of fraud labels that had come on day 5.

So :class:`PartitionAligner` hands on a partition's records only up to ``lead_ms`` past the
slowest partition that still has records to read (or as far as a full batch reaches, when
that is further), and holds the rest back: the reader leaves a
partition out of its fetches while some of it is held (what the consumer has prefetched of it
stays; nothing is committed past what was handed on), and serves the held records first once
the others have caught up. The slowest
partition always moves, so nothing waits for good; a partition with nothing left to read
holds nobody back, and one with more to read that has handed nothing on yet (at start-up, the
broker not having answered for it) holds everybody back, which the reader bounds in time. In steady state every partition is within the lead, and the cost is one
JSON parse per partition per batch.

Labels go by when they became known (``label_time``): read as fetched, they can come long
after the decisions they teach. In one demo run the broker answered for the labels topic
only once a worker had decided 17 days of transactions, and the fraud model, which waits for
20 fraud labels, then decided nothing until day 36 of 50. Loan applications go along for the
same reason (their outcomes are labels).
"""

from __future__ import annotations

from typing import Any, Callable, Hashable

import orjson

from riskstream.schemas.events import parse_event_time


def record_event_time(record: Any, column: str = "event_time") -> int | None:
    """The time (``column``) of a fetched record, or None when it cannot be read (the driver
    dead-letters such records; alignment goes by the others)."""
    try:
        return parse_event_time(orjson.loads(record.value)[column])
    except Exception:
        return None


def record_time_by_topic(columns: dict[str, str]) -> Callable[[Any], int | None]:
    """A record's time read from its topic's time column (``columns``: topic -> column)."""
    return lambda record: record_event_time(record, columns.get(record.topic, "event_time"))


class PartitionAligner:
    def __init__(self, lead_ms: int, event_time: Callable[[Any], int | None] = record_event_time,
                 batch: int = 5000):
        self.lead_ms = int(lead_ms)
        # A batch has a fixed cost (a few ms of publishing, commits and Redis round trips): the
        # partitions go on to where the records read add up to a full batch, so batches stay
        # full when an hour of traffic is small.
        self.batch = int(batch)
        self.event_time = event_time
        self.held: dict[Hashable, list[Any]] = {}  # partition -> records read but not handed on
        self.last_time: dict[Hashable, int] = {}  # partition -> event time of the last handed on

    NOWHERE = -(1 << 62)  # a limit before any event time

    def holding(self) -> set[Hashable]:
        return {tp for tp, records in self.held.items() if records}

    def drop(self, partitions=None) -> None:
        """Forget held records (a rewind or a revocation: they are read again from the commit)."""
        for tp in list(self.held if partitions is None else partitions):
            self.held.pop(tp, None)
            self.last_time.pop(tp, None)

    def take(self, fetched: dict[Hashable, list[Any]], has_more: dict[Hashable, bool]) -> dict[Hashable, list[Any]]:
        """The records to decide now, per partition, from those just ``fetched`` and those held;
        ``has_more``: per assigned partition, whether the broker has more of it to read."""
        pending = {tp: self.held.pop(tp, []) + list(records) for tp, records in fetched.items()}
        for tp, records in self.held.items():
            pending.setdefault(tp, records)
        self.held = {}
        limit = self._limit(pending, has_more)
        out: dict[Hashable, list[Any]] = {}
        for tp, records in pending.items():
            if not records:
                continue
            cut = len(records) if limit is None else self._cut(records, limit)
            if cut < len(records):
                self.held[tp] = records[cut:]
            if cut:
                out[tp] = records[:cut]
                t = self.event_time(records[cut - 1])
                if t is not None:
                    self.last_time[tp] = t
        return out

    def _limit(self, pending: dict[Hashable, list[Any]], has_more: dict[Hashable, bool]) -> int | None:
        """How far the slowest partition still to be read reaches, plus the lead; None: no
        limit. A partition with records read reaches as far as a full batch of all partitions'
        records does (or all it has read, if less); one waiting for the broker stands where it
        last handed on. (Held back to the slowest's first record instead, what was held went on
        an hour at a time, a batch each: 2 workers drained the bench's backlog at 40k tx/s
        instead of 70k.) A partition with more to read that has handed nothing on yet holds
        everything back."""
        if self.lead_ms <= 0:
            return None
        spans = {}  # partition -> (first, last) event time of its records read
        for tp, records in pending.items():
            if records:
                first, last = self.event_time(records[0]), self.event_time(records[-1])
                first, last = (first if first is not None else last), (last if last is not None else first)
                if first is not None:
                    spans[tp] = (first, last, len(records))
        full = self._full_batch_time(list(spans.values()))
        reaches = []
        for tp in set(pending) | set(has_more):
            if tp in spans:  # read to its end, it bounds only the batch's size
                reaches.append(min(full, spans[tp][1]) if has_more.get(tp) else full)
            elif pending.get(tp):
                continue  # none of its records can be read: they go on, the driver dead-letters them
            elif has_more.get(tp):
                t = self.last_time.get(tp)
                if t is None:  # more to read, from nobody knows when: nothing goes on until it comes
                    return self.NOWHERE
                reaches.append(t)
        return min(reaches) + self.lead_ms if reaches else None

    def _full_batch_time(self, spans: list[tuple[int, int, int]]) -> int:
        """The event time by which the records read add up to a full batch, each partition's
        read as spread evenly between its first and last (two parses a partition). Counted
        in records, not partitions: a partition of labels holds weeks in a few hundred, and a
        share of the batch per partition counted it as much as one of transactions."""
        if not spans:
            return self.NOWHERE
        lo, hi = min(s[0] for s in spans), max(s[1] for s in spans)
        if sum(s[2] for s in spans) <= self.batch:
            return hi
        def read_by(t: int) -> float:
            return sum(n if t >= last else 0.0 if t < first else n * (t - first + 1) / (last - first + 1)
                       for first, last, n in spans)
        while lo < hi:
            mid = (lo + hi) // 2
            if read_by(mid) < self.batch:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def _cut(self, records: list[Any], limit: int) -> int:
        """How many of ``records`` are at or before ``limit``: a partition is in event-time
        order, near enough, so a binary search (a dozen parses for a fetch of 3,000)."""
        last = self.event_time(records[-1])
        if last is None or last <= limit:
            return len(records)
        lo, hi = 0, len(records) - 1  # records[hi] is past the limit
        while lo < hi:
            mid = (lo + hi) // 2
            t = self.event_time(records[mid])
            if t is None or t <= limit:
                lo = mid + 1
            else:
                hi = mid
        return lo
