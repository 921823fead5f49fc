"""`riskstream replay --offline --processes N`: the cards split over forked processes, one
writer to chDB. Integration tests against real chDB, comparing a 2-process run with a
1-process run of the same file."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import threading
import time
from contextlib import contextmanager

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from riskstream.schemas.events import DAY_MS
from riskstream.schemas.pan import PanTokenizer
from riskstream.schemas.transactions import TransactionBatch
from riskstream.settings import Settings
from riskstream.simulate import simulate
from riskstream.streams import offline, reading
from riskstream.streams.driver import Driver
from tests.conftest import query

# Features that depend only on the card's own history, so they must not depend on how the
# cards are split (the fraud rate depends on when labels arrive, chunk by chunk: left out).
CARD_FEATURES = ("card_first_seen", "card_seconds_since_prev", "card_txn_count_1h", "card_txn_count_1d",
                 "card_amount_sum_1h", "card_amount_sum_1d", "card_amount_mean_30d", "card_amount_std_30d",
                 "card_amount_zscore_30d", "card_distinct_merchants_1d", "card_new_country", "card_new_device",
                 "card_km_from_prev", "card_speed_kmh_from_prev")
# A shadow rule that fires on every transaction and writes the card's features into the
# decision's reasons, where ClickHouse keeps them; shadow rules never change a decision.
RULES = f"""
version: "test-card-features"
rules:
  - id: card_features
    version: 1
    mode: shadow
    description: The card's own features on every transaction (test only).
    action: review
    reason: {{code: CARD_FEATURES, text: "{' '.join(f'{f}={{{f}:.9g}}' for f in CARD_FEATURES)}"}}
    when: amount >= 0
"""
BAD_ROWS = (10, 20, 30, 40)


@contextmanager
def deadline(seconds: int):
    """Fail instead of hanging: SIGALRM interrupts the parent's wait for its processes."""
    def expired(signum, frame):
        raise AssertionError(f"replay still running after {seconds}s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def tx_file(tmp_path_factory):
    sim = simulate(days=3, customers=300, terminals=60, seed=5, with_market=False, with_credit=False)
    tx = {k: v.copy() for k, v in sim.transactions.items() if k != "fraud_scenario"}
    tx["amount"][[BAD_ROWS[0], BAD_ROWS[1]]] = [-5.0, np.nan]
    tx["transaction_id"][BAD_ROWS[2]] = ""
    tx["event_time"][BAD_ROWS[3]] //= 1000  # seconds, not milliseconds
    path = tmp_path_factory.mktemp("tx") / "tx.parquet"
    pq.write_table(pa.table(tx), path)
    rules = path.with_name("card_features.yaml")
    rules.write_text(RULES)
    return path, rules, tx


def run(tmp_path_factory, tx_file, processes: int):
    path, rules, _ = tx_file
    settings = Settings(data_dir=tmp_path_factory.mktemp(f"rs{processes}"), batch_max_events=200,
                        rules_file=str(rules))
    data = reading.load_input(path, "transactions", settings=settings, label_column="is_fraud", label_delay_ms=DAY_MS)
    with deadline(300):
        summary = offline.replay_offline(data, settings, processes=processes)
    return settings, summary, data


@pytest.fixture(scope="module")
def one(tmp_path_factory, tx_file):
    return run(tmp_path_factory, tx_file, 1)


@pytest.fixture(scope="module")
def two(tmp_path_factory, tx_file):
    return run(tmp_path_factory, tx_file, 2)


def count(settings: Settings, sql: str) -> int:
    return int(query(settings, sql)[0]["n"])


def test_every_transaction_is_decided_exactly_once(two, tx_file):
    settings, summary, data = two
    n = len(tx_file[2]["amount"]) - len(BAD_ROWS)
    assert summary.processes == 2 and summary.rows == data.n == n
    # Not FINAL: one row per event, never two (each card's rows went to one process only).
    assert count(settings, "SELECT count() AS n FROM decisions") == n
    assert count(settings, "SELECT uniqExact(event_id) AS n FROM decisions") == n
    assert count(settings, "SELECT count() AS n FROM transactions FINAL") == n
    assert summary.rows_written["decisions"] == summary.rows_written["transactions"] == n
    assert multiprocessing.active_children() == []


def test_dead_letters_are_those_of_one_process(one, two):
    sql = "SELECT offset, error, payload FROM dead_letters FINAL ORDER BY offset"
    assert query(two[0], sql) == query(one[0], sql)
    assert [int(d["offset"]) for d in query(two[0], sql)] == list(BAD_ROWS)
    assert two[1].dead_letters == one[1].dead_letters == len(BAD_ROWS)


def test_card_features_are_those_of_one_process(one, two):
    sql = ("SELECT event_id, arrayFilter(r -> startsWith(r, 'shadow:CARD_FEATURES'), reasons) AS f "
           "FROM decisions FINAL ORDER BY event_id")
    in_one = {r["event_id"]: r["f"] for r in query(one[0], sql)}
    in_two = {r["event_id"]: r["f"] for r in query(two[0], sql)}
    assert len(in_one) == one[1].rows and all(len(f) == 1 for f in in_one.values())
    assert in_two == in_one
    assert sum("card_txn_count_1d=0 " not in f[0] for f in in_one.values()) > len(in_one) // 2  # not all first-seen


def test_labels_add_up(one, two, tx_file):
    frauds = int(sum(tx_file[2]["is_fraud"][i] for i in range(len(tx_file[2]["amount"])) if i not in BAD_ROWS))
    assert frauds > 0
    assert two[1].labels == one[1].labels == frauds
    for settings, _, _ in (one, two):
        assert count(settings, "SELECT count() AS n FROM labels FINAL WHERE source = 'replay'") == frauds


def test_shards_split_by_card_and_keep_event_time_order(two):
    _, _, data = two
    cards = data.columns["card_id"]
    shards = offline.card_shards(cards, 2)
    assert set(shards.tolist()) == {0, 1}
    assert (offline.card_shards(cards, 2) == shards).all()  # stable
    for card in np.unique(cards)[:50]:
        assert len(set(shards[cards == card].tolist())) == 1
    label_shards = offline.card_shards(data.labels["entity_id"], 2)
    parts = [offline.shard_input(data, shards, label_shards, k) for k in (0, 1)]
    assert sum(p.n for p in parts) == data.n
    for k, part in enumerate(parts):
        assert (np.diff(part.times_ms) >= 0).all()
        assert set(offline.card_shards(part.columns["card_id"], 2).tolist()) <= {k}
        assert (np.diff(part.labels["label_time"]) >= 0).all()
        assert set(part.labels["entity_id"].tolist()) <= set(part.columns["card_id"].tolist())


def _in_replay_processes(monkeypatch, act) -> int:
    """Run ``act(batch)`` before each batch is scored in the replay processes (not in this one,
    which warms the engine up before forking); returns this process's pid."""
    parent = os.getpid()
    process_batch = Driver.process_batch

    def patched(self, batch, *args, **kw):
        if os.getpid() != parent:
            act(batch)
        return process_batch(self, batch, *args, **kw)

    monkeypatch.setattr(Driver, "process_batch", patched)
    return parent


def test_a_failing_process_stops_the_replay_with_its_error(tmp_path, tx_file, monkeypatch):
    def fail(batch):
        if batch.n and (batch.amount > 0).any():
            raise RuntimeError("injected scoring failure")

    _in_replay_processes(monkeypatch, fail)
    settings = Settings(data_dir=tmp_path / "rs", batch_max_events=200)
    data = reading.load_input(tx_file[0], "transactions", settings=settings)
    with deadline(120), pytest.raises(offline.ShardFailed, match="injected scoring failure") as err:
        offline.replay_offline(data, settings, processes=2)
    assert "of 2 failed: RuntimeError" in str(err.value) and "Traceback" in str(err.value)
    assert multiprocessing.active_children() == []


def test_a_process_that_dies_stops_the_replay(tmp_path, tx_file, monkeypatch):
    # like the OOM killer: no error message, the pipe just closes
    _in_replay_processes(monkeypatch, lambda batch: os._exit(3))
    settings = Settings(data_dir=tmp_path / "rs", batch_max_events=200)
    data = reading.load_input(tx_file[0], "transactions", settings=settings)
    with deadline(120), pytest.raises(offline.ShardFailed, match=r"exited \(code 3\) before finishing"):
        offline.replay_offline(data, settings, processes=2)
    assert multiprocessing.active_children() == []


def test_ctrl_c_stops_every_process(tmp_path, tx_file, monkeypatch):
    parent = _in_replay_processes(monkeypatch, lambda batch: time.sleep(600))
    settings = Settings(data_dir=tmp_path / "rs", batch_max_events=200)
    data = reading.load_input(tx_file[0], "transactions", settings=settings)
    # A suite started in the background by a non-interactive shell (or under nohup) inherits
    # SIGINT ignored, and Python then keeps it ignored: Ctrl-C is what this test is about, so
    # it listens for it as an interactive run does.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(5.0, os.kill, (parent, signal.SIGINT))
    timer.start()
    t0 = time.monotonic()
    try:
        with deadline(120), pytest.raises(KeyboardInterrupt):
            offline.replay_offline(data, settings, processes=2)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - t0 < 60
    assert multiprocessing.active_children() == []


def test_chunk_batch_is_what_from_columns_builds(tmp_path, tx_file):
    """The replay's view-based batches against the general constructor, with a card number
    (tokenized) and without the optional columns."""
    settings = Settings(data_dir=tmp_path / "rs")
    tok = PanTokenizer(settings.pan_key_bytes())
    tx = {k: v[:300].copy() for k, v in tx_file[2].items()
          if k in ("transaction_id", "event_time", "card_id", "merchant_id", "amount", "country")}
    tx["card_id"][7] = "4111111111111111"
    path = tmp_path / "few.parquet"
    pq.write_table(pa.table(tx), path)
    data = reading.load_input(path, "transactions", settings=settings)
    assert data.engine_types
    fast = reading.chunk_batch(data, 5, 250, tok)
    slow = TransactionBatch.from_columns({k: v[5:250] for k, v in data.columns.items()}, tok)
    assert fast.card_id[2].startswith("tok_")
    for f in dataclasses.fields(TransactionBatch):
        a, b = getattr(fast, f.name), getattr(slow, f.name)
        if f.name == "arrow":  # the file's own strings, row for row, for the ClickHouse blocks
            assert b is None and "card_id" not in a  # a card number in the chunk: never passed through
            assert set(a) == {"transaction_id", "merchant_id", "country"}
            for k, column in a.items():
                assert column.type == pa.string() and column.to_pylist() == fast.column(k).tolist(), k
            whole = reading.chunk_batch(data, 10, 250, tok)  # no card number in these rows
            assert whole.arrow["card_id"].to_pylist() == whole.card_id.tolist()
        elif f.name == "source_row":  # neither was decoded from messages
            assert a is None and b is None
        elif f.name == "optional":
            assert a.keys() == b.keys()
            for k in a:
                assert a[k].dtype == b[k].dtype and (a[k] == b[k]).all(), k
        else:
            assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), f.name


def test_cli_processes(tmp_path, tx_file, monkeypatch, capsys):
    from riskstream.cli import main

    monkeypatch.setenv("RISKSTREAM_DATA_DIR", str(tmp_path / "rs"))
    assert main(["replay", str(tx_file[0]), "--stream", "transactions", "--offline", "--processes", "2"]) == 0
    out = capsys.readouterr()
    assert "transactions/s in 2 processes" in out.out and "summed over the 2 replay processes" in out.out
    assert "2 processes" in out.err  # progress
    assert main(["replay", str(tx_file[0]), "--stream", "transactions", "--offline", "--processes", "0"]) == 2
    assert "--processes 0" in capsys.readouterr().err
    assert main(["replay", str(tx_file[0]), "--stream", "transactions", "--processes", "2"]) == 2
    assert "splits an --offline replay" in capsys.readouterr().err
    # Other streams: one process, and a note that says so.
    labels = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"event_id": ["t1", "t2"], "stream": ["transactions"] * 2, "label": ["chargeback"] * 2,
                             "label_time": [1_704_067_200_000, 1_704_067_260_000], "entity_id": ["c1", "c2"]}), labels)
    assert main(["replay", str(labels), "--stream", "labels", "--offline", "--processes", "2"]) == 0
    out = capsys.readouterr()
    assert "--stream labels runs in one process" in out.err and "2 rows in" in out.out and "processes" not in out.out
