"""The one publisher interface, and the recording publisher.

The driver hands every batch's outputs to a publisher through ``streams.outputs.publish``.
Three publishers implement this surface:

* ``sinks.kafka.OutputPublisher`` (the worker): decision, alert, limit and dead-letter topics,
  ClickHouse rows as blocks on the sink topic, limit controls into Redis;
* ``sinks.offline.ClickHouseBlocks`` (the offline replay): ClickHouse directly, in large
  blocks on a writer thread;
* :class:`RecordingPublisher` (a replay process that does not own ClickHouse, and tests):
  the calls themselves, to be made later on another publisher with :func:`make_calls`.

A publisher says what it wants: ``publishes_topics`` (False offline: no per-decision message
is built) and ``takes_arrow_tables`` (True for an in-process writer, which serialises the
Arrow tables on its own thread).
"""

from __future__ import annotations

from typing import Any, Protocol

from riskstream.schemas.events import DeadLetter


class Publisher(Protocol):
    publishes_topics: bool
    takes_arrow_tables: bool

    def send(self, stream: str, messages: list[tuple[bytes | None, bytes]]) -> None:
        """Messages (key, value) for an output topic: decisions, alerts, limits."""

    def sink(self, table: str, rows: list[bytes]) -> None:
        """JSON rows for a ClickHouse table."""

    def sink_arrow(self, table: str, blocks: list[Any], rows: int = 0) -> None:
        """Arrow IPC streams (or tables) for a ClickHouse table."""

    def limits(self, limits: list[dict[str, Any]]) -> None:
        """Limit controls for the synchronous store (Redis)."""

    def dead_letters(self, dead: list[DeadLetter]) -> None:
        """Rejected records, with their reason and original bytes."""


class RecordingPublisher:
    """Records each call, in order. chDB lets one process own a data path, so a replay
    process records its chunks' calls (JSON rows and Arrow IPC blocks, as bytes) and the
    parent makes them on its one writer; tests read ``calls``."""

    publishes_topics = False
    takes_arrow_tables = False
    CALLS = frozenset({"send", "sink", "sink_arrow", "limits", "dead_letters"})

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def send(self, stream: str, messages) -> None:
        self.calls.append(("send", stream, messages))

    def sink(self, table: str, rows: list[bytes]) -> None:
        if rows:
            self.calls.append(("sink", table, rows))

    def sink_arrow(self, table: str, blocks: list[Any], rows: int = 0) -> None:
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

    def rows(self, table: str) -> list[bytes]:
        """Every JSON row recorded for ``table``."""
        return [r for name, *args in self.calls if name == "sink" and args[0] == table for r in args[1]]


def make_calls(publisher: Publisher, calls: list[tuple]) -> None:
    """Make recorded calls on ``publisher``, in order."""
    for name, *call_args in calls:
        if name not in RecordingPublisher.CALLS:
            raise ValueError(f"not a publisher call: {name!r}")
        getattr(publisher, name)(*call_args)
