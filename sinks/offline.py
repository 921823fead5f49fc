"""The offline replay's publisher: ClickHouse directly, in large blocks on a writer thread.

Topics and Redis do not exist offline; what would have gone there is counted. chDB and the
HTTP insert release the GIL, so writing overlaps scoring. Measurements behind the block sizes
and the writers are in ``bench/results/``.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable

import orjson

from riskstream.schemas.events import DeadLetter
from riskstream.settings import Settings
from riskstream.sinks.clickhouse import ARROW_INSERT_SETTINGS, arrow_tables, combine_blocks, concat_arrow_tables

# Rows per ClickHouse insert (per table). Bigger inserts write fewer parts for chDB to merge
# in the background; much bigger buffers fault in fresh pages for every block, which slows
# the scoring thread beside them.
INSERT_ROWS = 50_000
# The parent of a multi-process replay only writes, so those page faults do not slow scoring,
# and chDB spends less per row on bigger inserts.
SHARDED_INSERT_ROWS = 100_000
TAIL_INSERT_ROWS = 5_000
WRITER_SWITCH_INTERVAL_S = 0.001  # see replay_offline


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
            # what is still queued then goes in on two threads. Two writers from the start
            # would take CPU from the scoring.
            self._tail_client = open_client(settings)
        self._rows_lock = threading.Lock()  # rows_written, from both writers at close
        self._threads = [threading.Thread(target=self._write_loop, args=(self._client,), daemon=True,
                                          name="replay-clickhouse")]
        self._threads[0].start()

    # -- the publisher surface (sinks.publisher.Publisher) ------------------------------
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
            self.sink("dead_letters", [d.encoded() for d in dead])
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


