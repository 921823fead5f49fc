"""`riskstream replay --offline`: the driver over a file's chunks, in this process or in N.

The same :class:`~riskstream.streams.driver.Driver` the worker runs goes over chunks of
``batch_max_events`` rows; the outputs go to ClickHouse through the offline publisher
(``sinks.offline.ClickHouseBlocks``). A label is learned before the first chunk that starts
after its ``label_time``: never early, at most one chunk late.

``--processes N`` splits a transactions file by card over N forked processes, the way a
topic's partitions split traffic over N online workers: each process runs its own driver over
its cards, in event-time order with their labels, and hands its encoded output back to this
process, the only one that writes ClickHouse.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
import traceback
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import orjson

from riskstream.schemas.events import DeadLetter, InvalidEvent
from riskstream.schemas.pan import tokenizer_for
from riskstream.schemas.registry import stream_spec
from riskstream.settings import Settings
from riskstream.sinks.offline import SHARDED_INSERT_ROWS, ClickHouseBlocks
from riskstream.sinks.publisher import Publisher, RecordingPublisher, make_calls
from riskstream.streams.driver import Driver, tune_garbage_collector
from riskstream.streams.outputs import publish
from riskstream.streams.progress import Progress
from riskstream.streams.reading import ReplayInput, chunk_batch, label_rows, row_chunks, transaction_chunks

WRITER_SWITCH_INTERVAL_S = 0.001  # see _replay_in_process


@dataclass
class ReplaySummary:
    stream: str
    rows: int
    labels: int
    dead_letters: int
    seconds: float
    rows_written: dict[str, int] = field(default_factory=dict)
    profile: dict[str, float] = field(default_factory=dict)  # seconds per stage (offline)
    processes: int = 1  # offline: how many processes scored (stage seconds are summed over them)

    @property
    def rate(self) -> float:
        return self.rows / max(self.seconds, 1e-9)

    @property
    def rate_with_close(self) -> float:
        """Offline: the rate counting the ClickHouse client's close after the last row (an
        embedded chDB waits there for the merges it started; a server merges in the background)."""
        return self.rows / max(self.seconds + self.profile.get("clickhouse_close", 0.0), 1e-9)



def score_transaction_chunks(data: ReplayInput, driver: Driver, publisher: Publisher, prof: dict[str, float],
                             on_chunk: Callable[[int], None]) -> int:
    """The offline transaction source: per chunk of ``batch_max_events`` rows, the labels due
    before it go to the driver, then the chunk; outputs go to ``publisher``;
    ``on_chunk(rows done)`` follows each chunk. Adds seconds per stage to ``prof``; returns
    the labels fed."""
    labels_fed = 0
    for start, end, due in transaction_chunks(data, driver.settings.batch_max_events):
        t0 = time.perf_counter()
        if len(due):
            publish(driver.process_rows("labels", label_rows(data.labels, due)), publisher)
            labels_fed += len(due)
        t1 = time.perf_counter()
        prof["labels"] += t1 - t0
        if end == start:
            continue
        batch = chunk_batch(data, start, end, driver.tokenizer)
        t2 = time.perf_counter()
        out = driver.process_batch(batch)
        t3 = time.perf_counter()
        publish(out, publisher)
        t4 = time.perf_counter()
        prof["batch"] += t2 - t1
        prof["engine"] += t3 - t2
        prof["encode"] += t4 - t3
        on_chunk(end)
    return labels_fed


def validated_rows(data: ReplayInput, start: int, end: int, settings: Settings,
                   now_ms: int) -> tuple[list[dict[str, Any]], list[DeadLetter]]:
    """Rows ``start:end`` of a row-shaped stream's file through its registry validator, as
    the worker's decoder validates a message (without the JSON round trip); a bad row becomes
    a dead letter with the row as JSON, card numbers masked, its offset the row's number in the
    file."""
    spec = stream_spec(data.stream)
    validate = spec.validate_row
    names = list(data.columns)
    rows: list[dict[str, Any]] = []
    dead: list[DeadLetter] = []
    tokenizer = tokenizer_for(settings)
    topic = settings.topic(data.stream)
    for j, values in enumerate(zip(*(data.columns[c][start:end].tolist() for c in names))):
        i = start + j
        rec = {k: _plain(v) for k, v in zip(names, values)}
        if i in data.unreadable_times:
            rec[spec.time_column] = data.unreadable_times[i]
        try:
            rows.append(validate(rec, now_ms))
        except InvalidEvent as exc:
            dead.append(DeadLetter(topic, -1, int(data.row_number[i]), str(exc),
                                   tokenizer.mask(orjson.dumps(rec, default=str)), received_at_ms=now_ms))
    return rows, dead


def _plain(value: Any) -> Any:
    """A file's value as a decoded JSON message would hold it (a null number is absent)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    return str(value)


def replay_offline(data: ReplayInput, settings: Settings, driver: Driver | None = None,
                   writer: ClickHouseBlocks | None = None, progress: Progress | None = None,
                   processes: int = 1) -> ReplaySummary:
    """Run the file through the worker's driver in-process, in chunks of ``batch_max_events``.

    With ``processes > 1`` a transactions file is split by card over that many processes
    (:func:`replay_sharded`); other streams always run in this process. While it runs, the
    process is tuned for scoring (see :func:`_process_tuning_restored`)."""
    if processes > 1 and data.stream == "transactions" and driver is not None:
        raise ValueError("replay_offline: a driver lives in one process; pass driver=None with processes > 1")
    # A replay of history gives the same figures every time: volatility refits happen in line.
    settings = settings.model_copy(update={"market_refit_background": False})
    with _process_tuning_restored():
        # Before any driver is built or process forked (the processes inherit a frozen heap);
        # tuning after the build measured slower (bench/results).
        tune_garbage_collector()
        if processes > 1 and data.stream == "transactions":
            return replay_sharded(data, settings, processes, writer=writer, progress=progress)
        return _replay_in_process(data, settings, driver, writer, progress)


@contextmanager
def _process_tuning_restored() -> Iterator[None]:
    """A replay tunes its process for scoring (the garbage collector, NumPy's huge pages, the
    switch interval); afterwards a caller that goes on (the bench, tests, a notebook) has
    its own settings back."""
    import gc

    thresholds, frozen = gc.get_threshold(), gc.get_freeze_count()
    switch_interval = sys.getswitchinterval()
    hugepages = numpy_hugepages(False)
    try:
        yield
    finally:
        sys.setswitchinterval(switch_interval)
        gc.set_threshold(*thresholds)
        if not frozen:
            gc.unfreeze()
        if hugepages is not None:
            numpy_hugepages(hugepages)


def _replay_in_process(data: ReplayInput, settings: Settings, driver: Driver | None,
                       writer: ClickHouseBlocks | None, progress: Progress | None) -> ReplaySummary:
    t_start = time.perf_counter()
    driver = driver or Driver(settings)
    writer = writer or ClickHouseBlocks(settings)
    prof = {"engine": 0.0, "batch": 0.0, "encode": 0.0, "labels": 0.0}
    chunk = settings.batch_max_events
    labels_fed = 0
    # The writer thread takes the GIL back after each ClickHouse or Arrow call, waiting up to a
    # switch interval for the scoring thread to yield it; the default 5 ms put the writer
    # behind at the end (bench/results).
    sys.setswitchinterval(min(sys.getswitchinterval(), WRITER_SWITCH_INTERVAL_S))
    t_run = time.perf_counter()
    try:
        writer.dead_letters(data.dead)
        progress = progress or Progress(data.n, data.stream)
        if data.stream == "transactions":
            def chunk_done(done: int) -> None:
                writer.chunk_done(data.n - done)
                progress.update(done)

            labels_fed = score_transaction_chunks(data, driver, writer, prof, chunk_done)
        else:
            now_ms = int(time.time() * 1000)
            for start, end, due in row_chunks(data, chunk):
                t0, waited0 = time.perf_counter(), writer.waited_s
                if len(due):  # outcomes (--label-column) known before these rows happened
                    labels = label_rows(data.labels, due)
                    publish(driver.process_rows("labels", labels), writer)
                    labels_fed += len(labels)
                rows, dead = validated_rows(data, start, end, settings, now_ms)
                publish(driver.process_rows(data.stream, rows, dead), writer)
                if data.stream == "labels":
                    labels_fed += len(rows)
                prof["engine"] += time.perf_counter() - t0 - (writer.waited_s - waited0)  # waits: clickhouse_wait
                progress.update(end)
        t_close = time.perf_counter()
        rows_written = writer.close()
    except BaseException:
        try:
            writer.close()
        except BaseException:
            pass
        raise
    # Transactions wait for the writer only between chunks (chunk_done), outside the stages.
    seconds = _closed(writer, prof, t_start, t_run, t_close)
    return ReplaySummary(data.stream, data.n, labels_fed, writer.counts.get("dead_letters", 0), seconds,
                         rows_written, prof)


# --------------------------------------------------------------------------------------
# Offline in N processes: the cards split the way a topic's partitions split them
# --------------------------------------------------------------------------------------
def _closed(writer: ClickHouseBlocks, prof: dict[str, float], t_start: float, t_run: float, t_close: float) -> float:
    """A replay's seconds once its writer has closed: from the run's start to its last row in
    ClickHouse. Building the engine (JIT) goes to ``setup``, the writer's waits to
    ``clickhouse_wait``, and closing the client after the last row to ``clickhouse_close``."""
    prof["clickhouse_wait"] = writer.written_at - t_close + writer.waited_s
    prof["setup"] = t_run - t_start
    prof["clickhouse_close"] = writer.client_close_s
    return writer.written_at - t_run


class ShardFailed(RuntimeError):
    """A replay process failed; the message carries its error and its traceback."""


def default_processes() -> int:
    """Scoring processes for an offline replay: one per core but one, which the parent's
    ClickHouse writer needs: more scoring processes than that fight the writer for the cores
    (the bench's figures for 1 and 2 processes are in bench/results)."""
    return max(1, (os.cpu_count() or 1) - 1)


def card_shards(cards: np.ndarray, n: int) -> np.ndarray:
    """Each card's shard: ``crc32(card) % n``, what librdkafka's default partitioner does with
    a message key, so shard ``k`` holds the cards that partition ``k`` of an ``n``-partition
    topic carries. Stable across runs and machines (unlike ``hash()``).

    >>> card_shards(np.array(["card-1", "card-4", "card-1", "d"], dtype=object), 2).tolist()
    [0, 1, 0, 0]
    """
    crc = zlib.crc32
    return np.fromiter((crc(("" if c is None else str(c)).encode()) % n for c in cards.tolist()),
                       dtype=np.int32, count=len(cards))


def shard_input(data: ReplayInput, row_shard: np.ndarray, label_shard: np.ndarray, k: int) -> ReplayInput:
    """Shard ``k`` of the input: its cards' rows and their labels, in the same event-time order.
    Dead letters stay with the parent, which writes them once."""
    rows = np.flatnonzero(row_shard == k)
    labels = np.flatnonzero(label_shard == k)
    return ReplayInput(stream=data.stream, path=data.path, columns={c: v[rows] for c, v in data.columns.items()},
                       times_ms=data.times_ms[rows], row_number=data.row_number[rows],
                       label_column=data.label_column, labels={c: v[labels] for c, v in data.labels.items()},
                       file_rows=len(rows), engine_types=data.engine_types,
                       arrow={c: v.take(rows) for c, v in data.arrow.items()})



def _warm_up(driver: Driver, data: ReplayInput, rows: int = 64) -> None:
    """A few of the input's rows, and a label, through a throwaway driver, so that the numba
    kernels are compiled (or loaded from numba's cache) once, before forking: the replay
    processes inherit the machine code. ``Driver()`` compiles the rule kernel itself; the
    processes share its holder."""
    m = min(rows, data.n)
    if m == 0:
        return
    if len(data.labels.get("label_time", ())):
        label = label_rows(data.labels, np.arange(1))[0]
        label["event_time"] = label["label_time"] = int(data.times_ms[0])  # due at the first row
        driver.learn([label])
    publish(driver.process_batch(chunk_batch(data, 0, m, driver.tokenizer)), RecordingPublisher())


SHARD_STAGES = ("labels", "batch", "engine", "encode", "send")


def _replay_shard(k: int, data: ReplayInput, row_shard: np.ndarray, label_shard: np.ndarray, settings: Settings,
                  rules, conn, inherited: list) -> None:
    """One replay process (forked): its own driver over shard ``k``; every chunk's outputs go
    to the parent over ``conn``, whose blocking send bounds what waits in memory to one chunk."""
    # Ctrl-C reaches the whole process group: the parent decides, and stops us with SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for c in inherited:  # only the parent may hold a read end: if it dies, our next send fails
        c.close()
    numpy_hugepages(False)
    try:
        shard = shard_input(data, row_shard, label_shard, k)
        driver = Driver(settings, rules_holder=rules)
        tune_garbage_collector(collect=False)
        outputs = RecordingPublisher()
        prof = dict.fromkeys(SHARD_STAGES, 0.0)

        def chunk_done(done: int) -> None:
            t0 = time.perf_counter()
            conn.send(("chunk", done, outputs.take()))
            prof["send"] += time.perf_counter() - t0

        labels = score_transaction_chunks(shard, driver, outputs, prof, chunk_done)
        conn.send(("done", shard.n, outputs.take(), labels, prof))
    except BaseException as exc:
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        except (OSError, ValueError):
            pass  # the parent is gone
        sys.exit(1)


def numpy_hugepages(enabled: bool) -> bool | None:
    """Whether NumPy asks for transparent huge pages on arrays of 4 MB and more; returns the
    previous setting (None where NumPy cannot say). A replay turns them off: it allocates
    such arrays afresh for every chunk, and each then costs a 2 MB clear, or a copy in a
    forked process (bench/results has the measurements). NUMPY_MADVISE_HUGEPAGE=0 does the
    same, but is read only when numpy is imported."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray
    setter = getattr(multiarray, "_set_madvise_hugepage", None)
    return None if setter is None else bool(setter(enabled))


def _widen_pipe(fd: int, size: int = 1 << 20) -> None:
    """A chunk's outputs are ~1.7 MB: a 1 MiB pipe (Linux's default maximum) instead of 64 KiB
    means fewer wake-ups of the parent per chunk. Best effort: elsewhere the pipe stays as is."""
    import fcntl

    try:
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), size)
    except OSError:
        pass


def _stop_processes(procs: list, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if one is still there after ``timeout`` seconds."""
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    deadline = time.monotonic() + timeout
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join(5)


def replay_sharded(data: ReplayInput, settings: Settings, processes: int, writer: ClickHouseBlocks | None = None,
                   progress: Progress | None = None) -> ReplaySummary:
    """Score a transactions file in ``processes`` forked processes, one shard of the cards each
    (:func:`card_shards`), like as many online workers each owning a share of the partitions.

    Each process builds its own driver and runs the same chunk loop over its shard in event
    time order, its labels included. So card-level features are the same as in one process,
    while merchant/terminal features and the models see only their process's traffic: scores
    can differ slightly from a one-process run. Only this process writes ClickHouse."""
    import multiprocessing

    t_start = time.perf_counter()
    # fork: the processes inherit the input and the compiled kernels; it happens before this
    # process opens chDB or starts the writer's thread (unless a writer is passed in).
    ctx = multiprocessing.get_context("fork")
    warm = Driver(settings)
    _warm_up(warm, data)
    t_run = time.perf_counter()
    cards = data.columns["card_id"] if "card_id" in data.columns else data.columns["customer_id"]
    row_shard = card_shards(cards, processes)
    label_shard = card_shards(data.labels["entity_id"], processes) if data.labels else np.zeros(0, np.int32)
    progress = progress or Progress(data.n, "transactions")
    pipes = [ctx.Pipe(duplex=False) for _ in range(processes)]  # (parent's read end, child's write end)
    for _, child_end in pipes:
        _widen_pipe(child_end.fileno())
    procs: list = []
    output: _OpeningWriter | None = None
    prof = dict.fromkeys(SHARD_STAGES, 0.0)
    try:
        for k, (_, child_end) in enumerate(pipes):
            inherited = [c for pipe in pipes for c in pipe if c is not child_end]
            proc = ctx.Process(target=_replay_shard, name=f"riskstream-replay-{k}", daemon=True,
                               args=(k, data, row_shard, label_shard, settings, warm.rules, child_end, inherited))
            proc.start()
            procs.append(proc)
        for _, child_end in pipes:
            child_end.close()
        del warm
        output = _OpeningWriter(writer, settings, backlog_chunks=2 * processes)
        output.make([("dead_letters", data.dead)], data.n)
        labels_fed = _collect([reader for reader, _ in pipes], procs, output, progress, prof, data.n)
        for proc in procs:
            proc.join(10)
        opened = output.writer()
        t_close = time.perf_counter()
        rows_written = opened.close()
    except BaseException:
        _stop_processes(procs)  # first, so that none is left writing while the writer drains
        if output is not None:
            output.close_quietly()
        raise
    finally:
        _stop_processes(procs)
        for reader, _ in pipes:
            reader.close()
    seconds = _closed(opened, prof, t_start, t_run, t_close)
    prof["receive"] = max(0.0, prof["receive"] - opened.waited_s)
    return ReplaySummary(data.stream, data.n, labels_fed, opened.counts.get("dead_letters", 0), seconds,
                         rows_written, prof, processes)


class _OpeningWriter:
    """The parent's writer, opened on a thread: chDB takes a good part of a second to start,
    and meanwhile the replay processes score instead of waiting on full pipes. Their first
    chunks wait here, at most ``backlog_chunks`` of them, then the writer is waited for."""

    def __init__(self, writer: ClickHouseBlocks | None, settings: Settings, backlog_chunks: int):
        from concurrent.futures import Future, ThreadPoolExecutor

        self._backlog: list[tuple[list[tuple], int]] = []
        self._limit = backlog_chunks
        self._writer = writer
        self._future: Future | None = None
        if writer is None:  # threads only now, after the fork
            pool = ThreadPoolExecutor(1, thread_name_prefix="replay-open")
            self._future = pool.submit(ClickHouseBlocks, settings, insert_rows=SHARDED_INSERT_ROWS)
            pool.shutdown(wait=False)  # its thread ends once the writer is open

    def make(self, calls: list[tuple], rows_to_come: int) -> None:
        """A process's recorded calls for a chunk; ``rows_to_come``: rows no process has
        scored yet (see ClickHouseBlocks.chunk_done)."""
        self._backlog.append((calls, rows_to_come))
        if self._writer is None and not self._future.done() and len(self._backlog) <= self._limit:
            return
        self.writer()

    def writer(self) -> ClickHouseBlocks:
        """The open writer, with the chunks that waited for it written."""
        if self._writer is None:
            self._writer = self._future.result()  # raises what opening raised
        while self._backlog:
            calls, rows_to_come = self._backlog.pop(0)
            make_calls(self._writer, calls)
            self._writer.chunk_done(rows_to_come)
        return self._writer

    def close_quietly(self) -> None:
        """After a failure: close the writer once it is open, without raising."""
        try:
            writer = self._writer or self._future.result()
            writer.close()
        except BaseException:
            pass


def _collect(readers: list, procs: list, writer: _OpeningWriter, progress: Progress, prof: dict[str, float],
             total: int) -> int:
    """Make each process's recorded calls on the writer as its chunks arrive, until all are
    done; a process that fails or dies stops the replay. Returns the labels fed.

    Messages: ``("chunk", rows done, calls)``, ``("done", rows done, calls, labels, stage
    seconds)`` and ``("error", error, traceback)``."""
    from multiprocessing.connection import wait

    shard = {reader: k for k, reader in enumerate(readers)}
    pending = set(readers)
    done = [0] * len(readers)
    labels = 0
    prof["receive"] = 0.0
    last_line = False  # the 100% line is printed once
    while pending:
        for reader in wait(list(pending), timeout=1.0):
            k = shard[reader]
            t0 = time.perf_counter()
            try:
                msg = reader.recv()
            except EOFError:
                procs[k].join(5)
                raise ShardFailed(f"replay process {k + 1} of {len(readers)} exited (code {procs[k].exitcode}) "
                                  "before finishing its shard") from None
            if msg[0] == "error":
                raise ShardFailed(f"replay process {k + 1} of {len(readers)} failed: {msg[1]}\n{msg[2]}")
            done[k] = msg[1]
            writer.make(msg[2], total - sum(done))
            if msg[0] == "done":
                labels += msg[3]
                for stage, seconds in msg[4].items():
                    prof[stage] += seconds
                pending.discard(reader)
            prof["receive"] += time.perf_counter() - t0
        if not last_line:
            progress.update(sum(done), f", {len(readers)} processes")
            last_line = sum(done) >= total
    return labels


