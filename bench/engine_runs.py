"""Runs of the driver in process, without a broker: the engine's own latency share, the offline
replay (in process and as the command runs it), the per-stage profile, memory at many cards."""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil

from riskstream.bench.harness import ProcessGroup, Progress, peak_rss_mb, percentiles, quiet
from riskstream.bench.workload import Messages
from riskstream.settings import Settings
from riskstream.streams.pipeline import SCORER_STAGES


def engine_latency(settings: Settings, msgs: Messages, start: int, rates: list[int], seconds: float,
                   lingers_ms: list[int], warm: int = 100_000,
                   progress: Progress = quiet) -> tuple[dict[str, dict[str, dict]], int]:
    """The engine's own share of the latency at each offered rate, with no broker.

    Message i arrives at ``t0 + i / rate`` on the wall clock whatever the engine does (open
    loop). A loop that batches as the worker's reader does (wait for data, then the linger for
    more, up to ``batch_max_events``) decodes, scores and encodes each batch with the real
    engine, labels fed in event time. Latency = the batch's outputs encoded - the arrival.
    The engine first runs the ``warm`` transactions before ``start`` (feature state filled,
    fraud model ready), as a worker that has been running; the garbage collector is tuned as
    the worker tunes it. Each linger takes the next ``sum(rates) * seconds`` transactions.

    Left out, and measured by the broker run: the hop to the worker, its fetch, handing the
    outputs to the producer and the hop to the reader. What shows here is a batch's fixed cost
    (~1.5-2 ms), the linger, and the batch in which the model learns (every 5,000 decisions,
    4-6 ms more).

    Returns ({"linger_<ms>": {rate: stats}}, the next unused message index).
    """
    from riskstream.streams.driver import Driver, batch_linger_s, tune_garbage_collector

    engine = Driver(settings)
    labels = LabelFeed(msgs)
    encoded = _EncodeOnly()
    times = msgs.columns["event_time"]
    most = settings.batch_max_events
    for a in range(max(0, start - warm), start, most):
        b = min(a + most, start)
        labels.feed_before(engine, int(times[a]))
        engine.process("transactions", msgs.values[a:b], [0] * (b - a), list(range(a, b)))
    tune_garbage_collector()
    out: dict[str, dict[str, dict]] = {}
    i0 = start
    for linger_ms in lingers_ms:
        batching = settings.model_copy(update={"batch_linger_ms": linger_ms})
        by_rate = out.setdefault(f"linger_{linger_ms}", {})
        for rate in rates:
            n = int(rate * seconds)
            if i0 + n > msgs.n:
                raise ValueError(f"not enough simulated messages for {rate}/s x {seconds}s")
            latency = np.empty(n)
            cost: list[float] = []  # seconds per batch
            t0 = time.perf_counter() + 0.01

            def arrived() -> int:  # transactions that have arrived by now
                return min(n, int((time.perf_counter() - t0) * rate) + 1)

            k = 0
            while k < n:
                first = t0 + k / rate
                now = time.perf_counter()
                if now < first:  # idle until the next transaction arrives
                    time.sleep(first - now)
                linger = batch_linger_s(arrived() - k, batching)  # as the worker's reader batches
                if linger:
                    time.sleep(linger)
                stop = min(arrived(), k + most)
                b0 = time.perf_counter()
                labels.feed_before(engine, int(times[i0 + k]))
                engine.run("transactions", msgs.values[i0 + k:i0 + stop], encoded, [0] * (stop - k),
                           list(range(i0 + k, i0 + stop)))
                done = time.perf_counter()
                cost.append(done - b0)
                latency[k:stop] = done - (t0 + np.arange(k, stop) / rate)
                k = stop
            busy = sum(cost) / (time.perf_counter() - t0)
            lat = percentiles(latency * 1000.0, "p50", "p95", "p99", "max")
            batch = percentiles(np.asarray(cost) * 1000.0, "p50", "p99", "max")
            by_rate[str(rate)] = {"transactions": n, "linger_ms": linger_ms, "batches": len(cost),
                                  "mean_batch": round(n / len(cost), 1), "busy_share": round(busy, 3),
                                  "batch_ms": batch, **lat}
            progress(f"  {rate:,}/s, linger {linger_ms} ms: p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f}, "
                     f"p99 {lat['p99']:.1f}, max {lat['max']:.1f}; {len(cost):,} batches of "
                     f"{n / len(cost):,.0f} on average, each {batch['p50']:.1f} ms (p99 {batch['p99']:.1f}, "
                     f"max {batch['max']:.1f}); engine busy {busy:.0%} of the time")
            i0 += n
    return out, i0


# ------------------------------------------------------------------------------------------
# 4. offline replay
# ------------------------------------------------------------------------------------------
class _EncodeOnly:
    """A publisher that takes the encoded outputs and drops them: what encoding costs, without
    a broker or ClickHouse."""

    publishes_topics = True
    takes_arrow_tables = False

    def send(self, stream, messages) -> None:
        pass

    def sink(self, table, rows) -> None:
        pass

    def sink_arrow(self, table, blocks, rows=0) -> None:
        pass

    def limits(self, limits) -> None:
        pass

    def dead_letters(self, dead) -> None:
        pass


def offline_settings(base: Settings, data_dir: Path) -> Settings:
    from pydantic import SecretStr

    # A fixed key: the tokenizer then needs nothing from data_dir.
    return base.model_copy(update={"data_dir": data_dir, "pan_key": SecretStr("bench-" + "k" * 32)})


def warm_engine(settings: Settings, msgs: Messages) -> float:
    """Compile or load the numba kernels once, outside of any timed section."""
    from riskstream.schemas.transactions import TransactionBatch
    from riskstream.streams.driver import Driver

    t0 = time.perf_counter()
    Driver(settings).process_batch(TransactionBatch.from_columns(msgs.column_slice(0, min(500, msgs.n))))
    return time.perf_counter() - t0


class LabelFeed:
    """The bench's labels handed to an in-process driver in event time, as the worker
    does: before a batch, every label whose time is before the batch's first event."""

    def __init__(self, msgs: Messages):
        from riskstream.streams.reading import DueLabels

        self.labels = msgs.labels()
        self.due = DueLabels(self.labels.get("label_time", np.zeros(0, np.int64)))

    @property
    def fed(self) -> int:
        return self.due.handed

    def feed_before(self, driver, event_time_ms: int) -> int:
        from riskstream.streams.reading import label_rows

        due = self.due.before(event_time_ms)
        if len(due):
            driver.process_rows("labels", label_rows(self.labels, due))
        return len(due)


def offline_replay(settings: Settings, msgs: Messages, batch_size: int = 5000,
                   progress: Progress = quiet) -> dict[str, Any]:
    """Driver.process_batch(TransactionBatch.from_columns(...)) + publish (encoding only), in process."""
    from riskstream.schemas.transactions import TransactionBatch
    from riskstream.streams.driver import Driver
    from riskstream.streams.outputs import publish

    engine = Driver(settings)
    encoded = _EncodeOnly()
    labels = LabelFeed(msgs)
    t_from = t_score = t_encode = t_labels = 0.0
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    last_print = t0
    decided = 0
    for a in range(0, msgs.n, batch_size):
        s_l = time.perf_counter()
        labels.feed_before(engine, int(msgs.columns["event_time"][a]))
        s0 = time.perf_counter()
        t_labels += s0 - s_l
        batch = TransactionBatch.from_columns(msgs.column_slice(a, a + batch_size))
        s1 = time.perf_counter()
        out = engine.process_batch(batch)
        s2 = time.perf_counter()
        publish(out, encoded)
        decided += out.decided
        s3 = time.perf_counter()
        t_from, t_score, t_encode = t_from + s1 - s0, t_score + s2 - s1, t_encode + s3 - s2
        if s3 - last_print >= 2.0:
            progress(f"  replayed {a + batch_size:,}/{msgs.n:,} ({(a + batch_size) / (s3 - t0):,.0f}/s)")
            last_print = s3
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    return {
        "path": "Driver.process_batch(TransactionBatch.from_columns) + publish, encoding only",
        "transactions": msgs.n, "decided": decided, "batch_size": batch_size, "seconds": round(wall, 3),
        "labels": labels.fed, "model_version_at_end": engine.transactions.version,
        "tps": round(msgs.n / wall, 1), "cpu_us_per_txn": round(cpu / msgs.n * 1e6, 2),
        "us_per_txn": {"labels": round(t_labels / msgs.n * 1e6, 2),
                       "from_columns": round(t_from / msgs.n * 1e6, 2),
                       "score_batch": round(t_score / msgs.n * 1e6, 2),
                       "encode_outputs": round(t_encode / msgs.n * 1e6, 2)},
    }


def offline_replay_module(settings: Settings, msgs: Messages, processes: int | None = None,
                          config: str | None = None) -> dict[str, Any]:
    """What ``riskstream replay FILE --stream transactions --offline`` runs, on the same
    transactions written to a Parquet file: read and validate (``load_input``), then
    ``replay_offline`` over ``processes`` processes (default: one per core but one), writing
    to chDB under ``settings.data_dir``.

    In a fresh interpreter, as the command runs, not in this process, which holds the bench's
    half a million serialised messages and their simulation. The simulator's labels go in as a
    second file (the command takes labels from a column). The child's progress lines go to
    this process's stderr. CPU counts the replay process and its children. ``config``: the
    settings file the bench was given (the child reads it too; ``settings`` supplies the data
    directory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from riskstream.streams.offline import default_processes

    processes = processes or default_processes()
    root = Path(settings.data_dir)
    root.mkdir(parents=True, exist_ok=True)
    path, labels_path = root / "bench-transactions.parquet", root / "bench-labels.parquet"
    pq.write_table(pa.table(dict(msgs.columns)), path)
    # The simulator's labels, interleaved by time as a label column's chargebacks would be.
    pq.write_table(pa.table(dict(msgs.labels())), labels_path)
    cmd = [sys.executable, "-m", "riskstream.bench.engine_bench", "offline", str(path), "--labels",
           str(labels_path), "--processes", str(processes), "--data-dir", str(settings.data_dir)]
    if config:
        cmd += ["--config", str(config)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"offline replay exited with {proc.returncode} (its error is printed above): "
                           + " ".join(cmd))
    res = orjson.loads(proc.stdout.strip().splitlines()[-1])
    res["path"] = (f"riskstream replay FILE.parquet --stream transactions --offline --processes {processes} "
                   "(streams.reading.load_input + replay_offline in a fresh process, with the simulator's "
                   "labels), chDB writer")
    res["decision_mix"] = decision_mix(settings)
    return res


def offline_main(args: argparse.Namespace) -> int:
    """The child of :func:`offline_replay_module`: one JSON line on stdout."""
    import resource

    import pyarrow.parquet as pq

    from riskstream.settings import load_settings
    from riskstream.streams.offline import replay_offline
    from riskstream.streams.progress import Progress as ReplayProgress
    from riskstream.streams.reading import load_input

    settings = offline_settings(load_settings(args.config), Path(args.data_dir))
    t0 = time.perf_counter()
    data = load_input(args.file, "transactions", settings=settings, validate=True)
    if args.labels:
        labels = pq.read_table(args.labels)
        data.labels = {k: labels.column(k).to_numpy(zero_copy_only=False) for k in labels.column_names}
    read_s = time.perf_counter() - t0

    def cpu_now() -> float:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    cpu0 = cpu_now()
    summary = replay_offline(data, settings, processes=args.processes,
                             progress=ReplayProgress(data.n, "transactions", out=sys.stderr))
    cpu = cpu_now() - cpu0
    print(orjson.dumps({
        "labels": summary.labels, "processes": args.processes, "transactions": summary.rows,
        "seconds": round(summary.seconds, 3), "tps": round(summary.rate, 1), "read_and_validate_s": round(read_s, 3),
        "tps_with_close": round(summary.rate_with_close, 1),  # tps runs to the last row in ClickHouse
        "cpu_us_per_txn": round(cpu / max(summary.rows, 1) * 1e6, 2),
        "profile_us_per_txn": {k: round(v / max(summary.rows, 1) * 1e6, 2) for k, v in summary.profile.items()},
        "rows_written": summary.rows_written,
    }).decode(), flush=True)
    return 0


def decision_mix(settings: Settings) -> dict[str, Any]:
    """What the replay decided (from its ``decisions`` rows), and how much of it the fraud
    model had a say in: the workload behind the figures (reasons and alerts cost per flagged
    transaction)."""
    from riskstream.sinks.clickhouse import open_client

    client = open_client(settings)
    try:
        rows = client.query("SELECT decision, count(), countIf(model_version LIKE 'fraud-warming-up%' OR model_version LIKE 'fraud-proving%') "
                            "FROM decisions FINAL GROUP BY decision").result_rows
    finally:
        client.close()
    total = sum(r[1] for r in rows) or 1
    return {"share": {r[0]: round(r[1] / total, 4) for r in sorted(rows)},
            "model_ready_share": round(1 - sum(r[2] for r in rows) / total, 3)}


# ------------------------------------------------------------------------------------------
# 6. per-stage profile of the worker path
# ------------------------------------------------------------------------------------------
STAGES = ("labels", "decode", *SCORER_STAGES, "encode_and_produce", "flush")


def stage_profile(settings: Settings, msgs: Messages, batch_size: int = 5000, limit: int | None = None,
                  progress: Progress = quiet) -> dict[str, Any]:
    """Where a transaction batch's time goes on the worker's path: the driver over the bench's
    messages, publishing to the real broker and Valkey. ``decode`` and the scorer's stages
    come from the driver and the scorer themselves (``TransactionScorer.stage_seconds``);
    ``encode_and_produce`` is the publish (topics, sink blocks, Redis limits); ``flush`` waits
    for the broker's acks, as the worker does before committing."""
    from riskstream.schemas.transactions import decode_transactions
    from riskstream.sinks.kafka import OutputPublisher, connect_redis
    from riskstream.streams.driver import Driver
    from riskstream.streams.outputs import publish

    driver = Driver(settings)
    scorer_seconds = driver.transactions.scorer.stage_seconds
    labels = LabelFeed(msgs)
    publisher = OutputPublisher(settings, redis_client=connect_redis(settings))
    total = {k: 0.0 for k in ("labels", "decode", "engine_other", "encode_and_produce", "flush")}
    n_total = 0
    stop = min(msgs.n, limit or msgs.n)
    values = msgs.values
    t_start = time.perf_counter()
    last_print = t_start
    for a in range(0, stop, batch_size):
        chunk = values[a:min(a + batch_size, stop)]
        n = len(chunk)
        t0 = time.perf_counter()
        labels.feed_before(driver, int(msgs.columns["event_time"][a]))
        t1 = time.perf_counter()
        batch, dead = decode_transactions(chunk, tokenizer=driver.tokenizer, topic=settings.topic("transactions"),
                                          partitions=[0] * n, offsets=list(range(a, a + n)),
                                          max_message_bytes=settings.max_message_bytes,
                                          max_amount=settings.max_amount)
        t2 = time.perf_counter()
        out = driver.process_batch(batch, dead, chunk)
        t3 = time.perf_counter()
        publish(out, publisher)
        t4 = time.perf_counter()
        publisher.flush()
        t5 = time.perf_counter()
        for stage, (x, y) in zip(total, ((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5))):
            total[stage] += y - x
        n_total += n
        if time.perf_counter() - last_print >= 2.0:
            progress(f"  profiled {n_total:,}/{stop:,} transactions")
            last_print = time.perf_counter()
    wall = time.perf_counter() - t_start
    # The driver's own time beside the scorer's stages (watermark, label clock, the batch retry guard).
    total["engine_other"] -= sum(scorer_seconds.values())
    total.update(scorer_seconds)
    us = {k: round(total[k] / n_total * 1e6, 3) for k in (*STAGES, "engine_other")}
    us["total"] = round(sum(total.values()) / n_total * 1e6, 3)
    return {"transactions": n_total, "batch_size": batch_size, "us_per_txn": us,
            "implied_tps": round(n_total / sum(total.values()), 1), "wall_s": round(wall, 2)}


# ------------------------------------------------------------------------------------------
# 5. memory at many cards (run in its own process)
# ------------------------------------------------------------------------------------------
def synthetic_batch(start: int, n: int, rng: np.random.Generator, t0_ms: int):
    """``n`` transactions of ``n`` new cards (ids start..start+n), the other entities pooled."""
    from riskstream.schemas.transactions import TRANSACTION_OPTIONAL, TransactionBatch

    def pool(prefix: str, size: int) -> np.ndarray:
        return np.array([f"{prefix}{i:08x}" for i in rng.integers(0, size, n)], dtype=object)

    optional = {k: np.full(n, "", dtype=object) for k in TRANSACTION_OPTIONAL}
    optional.update({
        "terminal_id": pool("T", 200_000), "customer_id": np.array([f"C{i:09d}" for i in range(start, start + n)], dtype=object),
        "device_id": pool("dev", 500_000), "ip": pool("ip", 300_000), "account_id": pool("acct", 500_000),
        "country": np.array(["FR", "DE", "NL", "BE", "PL"], dtype=object)[rng.integers(0, 5, n)],
        "channel": np.array(["pos", "ecom", "atm"], dtype=object)[rng.integers(0, 3, n)],
        "currency": np.full(n, "EUR", dtype=object), "mcc": np.full(n, "5411", dtype=object),
    })
    return TransactionBatch(
        transaction_id=np.array([f"m-{i}" for i in range(start, start + n)], dtype=object),
        event_time_ms=(t0_ms + np.arange(start, start + n, dtype=np.int64) * 50),
        card_id=np.array([f"card_{i:016x}" for i in range(start, start + n)], dtype=object),
        merchant_id=pool("M", 50_000),
        amount=np.round(rng.lognormal(3.5, 1.1, n), 2),
        lat=rng.uniform(45, 55, n), lon=rng.uniform(0, 15, n), optional=optional,
        partition=rng.integers(0, 4, n).astype(np.int32), offset=np.arange(start, start + n, dtype=np.int64),
    )


def memory_at_cards(cards: int, batch_size: int = 10_000, progress: Progress = quiet) -> dict[str, Any]:
    from pydantic import SecretStr

    from riskstream.streams.driver import Driver

    settings = Settings(data_dir=Path("."), pan_key=SecretStr("bench-" + "k" * 32))
    rss0 = psutil.Process().memory_info().rss
    engine = Driver(settings)
    rng = np.random.default_rng(5)
    t0_ms = int(time.time() * 1000) - cards * 50
    t0 = time.perf_counter()
    last_print = t0
    for a in range(0, cards, batch_size):
        engine.process_batch(synthetic_batch(a, min(batch_size, cards - a), rng, t0_ms))
        if time.perf_counter() - last_print >= 2.0:
            progress(f"  fed {a + batch_size:,}/{cards:,} cards ({(a + batch_size) / (time.perf_counter() - t0):,.0f}/s)")
            last_print = time.perf_counter()
    tracked = engine.features.tracked_entities
    feature_bytes = engine.features.state_bytes()
    models = engine.transactions.models
    model_bytes = models.state_bytes() if models is not None and hasattr(models, "state_bytes") else 0
    n_cards = tracked.get("card", cards)
    return {
        "cards": cards, "tracked_entities": tracked, "feature_state_bytes": feature_bytes,
        "state_bytes_per_card": round(feature_bytes / max(n_cards, 1), 1),
        "model_state_bytes": model_bytes, "model_state_note": "ring of decisions awaiting labels: sized by capacity, not cards",
        "peak_rss_mb": round(peak_rss_mb(), 1), "rss_before_engine_mb": round(rss0 / 2**20, 1),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def memory_in_subprocess(cards: int, group: ProcessGroup, progress: Progress = quiet) -> dict[str, Any]:
    """Run :func:`memory_at_cards` in a fresh interpreter: its peak RSS is the engine's alone."""
    from riskstream.stack import _die_with_parent

    proc = group.add(subprocess.Popen([sys.executable, "-m", "riskstream.bench.engine_bench", "memory",
                                       "--cards", str(cards)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent, text=True))

    def relay() -> None:  # the child's progress lines, as they come
        for line in proc.stderr:
            progress(line.rstrip())

    t = threading.Thread(target=relay, daemon=True, name="memory-progress")
    t.start()
    out = proc.stdout.read()
    proc.wait()
    t.join(2)
    group.procs.remove(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"memory bench exited with {proc.returncode}")
    return orjson.loads(out.strip().splitlines()[-1])
