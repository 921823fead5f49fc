"""Event time: per-stream watermarks, and the one place where late labels wait until due.

A label must not reach a learner before the event it labels was decided: a replay or a
catching-up worker reads the small labels topic far ahead of the events. So every label
waits in the :class:`LabelClock` until the watermark of the stream it labels (its ``stream``
field) has reached its ``label_time``; the driver then hands it to that stream's processor.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Iterable

import numpy as np


class Watermark:
    """Event time of one stream: per partition the newest event time and when data last came
    (wall clock); the watermark is the slowest partition that had data in the last minute, so
    an idle or revoked partition cannot hold it back."""

    IDLE_PARTITION_S = 60.0

    def __init__(self) -> None:
        self.ms = 0
        self.partition_time: dict[int, tuple[int, float]] = {}

    def advance(self, partitions: np.ndarray, event_time_ms: np.ndarray) -> int:
        if len(event_time_ms) == 0:
            return self.ms
        now = time.monotonic()
        for p in np.unique(partitions).tolist():
            newest = int(event_time_ms[partitions == p].max())
            old = self.partition_time.get(p, (0, now))[0]
            self.partition_time[p] = (max(old, newest), now)
        live = [t for t, seen in self.partition_time.values() if now - seen <= self.IDLE_PARTITION_S]
        self.ms = min(live) if live else int(event_time_ms.max())
        return self.ms

    def at_start(self, partitions: np.ndarray, event_time_ms: np.ndarray) -> int:
        """The watermark at the start of a batch, without moving it: each partition that
        delivers stands at its first event time in the batch (its earlier events came before),
        the others where they were."""
        now = time.monotonic()
        times = {p: t for p, (t, seen) in self.partition_time.items() if now - seen <= self.IDLE_PARTITION_S}
        for p in np.unique(partitions).tolist():
            times[p] = max(times.get(p, 0), int(event_time_ms[partitions == p].min()))
        return min(times.values()) if times else int(event_time_ms.min())

    def assign(self, partitions: Iterable[int]) -> None:
        """Assigned partitions hold the watermark back until they deliver (or go idle): a
        first fetch that returns one partition must not move event time for all of them."""
        now = time.monotonic()
        for p in partitions:
            self.partition_time.setdefault(p, (0, now))

    def forget(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self.partition_time.pop(p, None)


class LabelClock:
    """Labels waiting for their stream's event time, per labelled stream (bounded: past
    ``max_pending`` the oldest are handed out at once)."""

    def __init__(self, max_pending: int = 1_000_000):
        self.max_pending = max_pending
        self.pending: dict[str, list[dict[str, Any]]] = {}

    def __len__(self) -> int:
        return sum(map(len, self.pending.values()))

    def add(self, labels: Iterable[dict[str, Any]]) -> None:
        for label in labels:
            self.pending.setdefault(label["stream"], []).append(label)

    def due(self, stream: str, watermark_ms: int) -> list[dict[str, Any]]:
        """The labels of ``stream`` whose time has come, in arrival order; they leave the clock."""
        waiting = self.pending.get(stream)
        if not waiting:
            return []
        due = [r for r in waiting if r["label_time"] <= watermark_ms]
        if due:
            waiting = [r for r in waiting if r["label_time"] > watermark_ms]
        if len(waiting) > self.max_pending:
            waiting.sort(key=lambda r: r["label_time"])
            extra = len(waiting) - self.max_pending
            due += waiting[:extra]
            waiting = waiting[extra:]
        self.pending[stream] = waiting
        return due

    def state(self) -> dict[str, list[dict[str, Any]]]:
        return {s: list(v) for s, v in self.pending.items() if v}

    def load(self, state: dict[str, list[dict[str, Any]]]) -> None:
        """Labels restored from a checkpoint go before any that came since."""
        for stream, labels in state.items():
            self.pending[stream] = list(labels) + self.pending.get(stream, [])


class SeenLabels:
    """Labels already taken, so that one sent twice (a chargeback re-sent, a labels file
    replayed) counts once in the fraud-rate features and teaches the models once. A label is
    the same when it says the same about the same event: (stream, event id, positive or not).
    Bounded: past ``max_keys`` the oldest are forgotten (a repeat that late counts again)."""

    def __init__(self, max_keys: int = 500_000):
        self.max_keys = max_keys
        self.keys: OrderedDict[tuple[str, str, bool], None] = OrderedDict()
        self.repeats = 0

    def fresh(self, labels: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The labels not seen before (also within ``labels``); they are remembered."""
        out = []
        for label in labels:
            key = (label["stream"], label["event_id"], bool(label["is_positive"]))
            if key in self.keys:
                self.repeats += 1
                continue
            self.keys[key] = None
            out.append(label)
        while len(self.keys) > self.max_keys:
            self.keys.popitem(last=False)
        return out

    def state(self) -> list[tuple[str, str, bool]]:
        return list(self.keys)

    def load(self, keys: Iterable[Iterable[Any]]) -> None:
        restored = OrderedDict((tuple(k), None) for k in keys)
        restored.update(self.keys)
        self.keys = restored
