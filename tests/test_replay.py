"""`riskstream replay`: offline in-process replay into chDB, label delays, --map, errors, and
online replay through the real embedded stack and worker."""

from __future__ import annotations

import argparse
import gc
import sys

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from riskstream.commands import replay
from riskstream.schemas.events import DAY_MS
from riskstream.settings import ConfigError, Settings
from riskstream.simulate import simulate, write_simulation
from riskstream.sinks import offline as sinks_offline
from riskstream.streams import offline, reading
from tests.conftest import query, wait_for


@pytest.fixture(scope="module")
def sim():
    return simulate(days=3, customers=250, terminals=50, seed=3, with_market=False, with_credit=False)


def args(file, stream="transactions", maps=(), label_column=None, label_delay=None, offline=True, rate=None,
         processes=1):
    return argparse.Namespace(file=str(file), stream=stream, map=list(maps), label_column=label_column,
                              label_delay=label_delay, offline=offline, rate=rate, config=None, label_positive=None,
                              processes=processes if offline else None)


def count(settings: Settings, sql: str) -> int:
    return int(query(settings, sql)[0]["n"])


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_offline_replay_decides_every_transaction_once(tmp_path, sim, suffix, capsys):
    path = write_simulation(sim, tmp_path / f"tx{suffix}")[0]
    settings = Settings(data_dir=tmp_path / "rs")
    assert replay.run_replay(args(path, label_column="is_fraud", label_delay="2d"), settings) == 0
    n = len(sim.transactions["amount"])
    assert count(settings, "SELECT count() AS n FROM decisions FINAL") == n
    assert count(settings, "SELECT uniqExact(event_id) AS n FROM decisions") == n
    assert count(settings, "SELECT count() AS n FROM transactions FINAL") == n
    frauds = int(sim.transactions["is_fraud"].sum())
    assert frauds > 0
    assert count(settings, "SELECT count() AS n FROM labels FINAL WHERE source = 'replay'") == frauds
    # The label column is ground truth: it must not reach the engine's stored transaction.
    assert "is_fraud" not in query(settings, "SELECT * FROM transactions LIMIT 1")[0]
    out = capsys.readouterr()
    assert f"{n:,} transactions" in out.out and "transactions/s" in out.out
    assert "riskstream sql" in out.out and "%" in out.err


def test_labels_reach_the_engine_only_after_their_label_time(tmp_path, sim):
    path = write_simulation(sim, tmp_path / "tx.parquet")[0]
    settings = Settings(data_dir=tmp_path / "rs", batch_max_events=200)
    data = reading.load_input(path, "transactions", settings=settings, label_column="is_fraud",
                             label_delay_ms=DAY_MS)
    n_labels = len(data.labels["label_time"])
    assert n_labels == int(sim.transactions["is_fraud"].sum())
    assert (data.labels["label_time"] - DAY_MS == sim.transactions["event_time"][sim.transactions["is_fraud"] == 1]).all()

    class RecordingEngine:
        """Records the event-time clock (latest transaction scored) when labels are learned."""

        def __init__(self):
            from riskstream.streams.driver import Driver

            self.inner = Driver(settings, with_models=False)
            self.tokenizer = self.inner.tokenizer
            self.settings = settings
            self.clock = 0
            self.next_chunk_start: list[int] = []
            self.learned: list[tuple[int, int]] = []  # (label_time, clock when learned)
            self.switch_intervals: list[float] = []
            self.gc_states: list[tuple] = []

        def process_rows(self, stream, rows, dead=None):
            assert stream == "labels"
            # Not due before the previous chunk either: at most one chunk late.
            previous_start = self.next_chunk_start[-1] if self.next_chunk_start else 0
            assert all(r["label_time"] >= previous_start for r in rows)
            self.learned += [(r["label_time"], self.clock) for r in rows]
            return self.inner.process_rows(stream, rows, dead)

        def process_batch(self, batch, dead=None, values=None):
            # Every label learned so far must be older than every row of this batch.
            self.next_chunk_start.append(int(batch.event_time_ms.min()))
            for label_time, _ in self.learned:
                assert label_time < batch.event_time_ms.min(), "label learned before its label_time"
            self.clock = int(batch.event_time_ms.max())
            self.switch_intervals.append(sys.getswitchinterval())
            self.gc_states.append((gc.get_threshold(), gc.get_freeze_count() > 0, numpy_hugepages()))
            return self.inner.process_batch(batch, dead, values)

    written = []
    engine = RecordingEngine()
    writer = sinks_offline.ClickHouseBlocks(settings, insert=lambda s, t, b, client: written.append(t) or 0)
    def numpy_hugepages():
        was = offline.numpy_hugepages(True)
        offline.numpy_hugepages(was)
        return was

    switch_interval = sys.getswitchinterval()
    process_state = (gc.get_threshold(), gc.get_freeze_count() > 0, numpy_hugepages())
    summary = offline.replay_offline(data, settings, driver=engine, writer=writer)
    assert summary.labels == n_labels == len(engine.learned)
    # the writer thread gets the GIL back sooner while scoring runs, and the process's own
    # setting is back afterwards
    assert max(engine.switch_intervals) <= offline.WRITER_SWITCH_INTERVAL_S < switch_interval
    assert sys.getswitchinterval() == switch_interval
    # and so are the collector (tuned while it ran) and NumPy's huge pages
    assert set(engine.gc_states) == {((50_000, 20, 20), True, False)}
    assert (gc.get_threshold(), gc.get_freeze_count() > 0, numpy_hugepages()) == process_state
    # Each label is learned at most one chunk after its time, and some only after the last row.
    assert [t for t, _ in engine.learned] == sorted(t for t, _ in engine.learned)
    last_time = int(data.times_ms[-1])
    assert any(t > last_time for t, _ in engine.learned)
    assert "labels" in written and "decisions" in written


def test_labels_are_handed_out_once_each_in_event_time():
    due = reading.DueLabels(np.array([10, 20, 20, 35, 90], dtype=np.int64))
    assert due.before(5).tolist() == []
    assert due.before(20).tolist() == [0]  # a label at 20 is not known before an event at 20
    assert due.before(21).tolist() == [1, 2]
    assert due.before(15).tolist() == []  # a late event: nothing twice
    assert due.before(40).tolist() == [3]
    assert due.rest().tolist() == [4] and due.rest().tolist() == []
    assert due.handed == 5


def test_clickhouse_blocks_go_together_and_shrink_towards_the_end(tmp_path, monkeypatch):
    monkeypatch.setattr(sinks_offline, "TAIL_INSERT_ROWS", 100)
    sink = pa.BufferOutputStream()
    chunk = pa.table({"event_id": [f"t{i}" for i in range(100)]})
    with pa.ipc.new_stream(sink, chunk.schema) as ipc:
        ipc.write_table(chunk)
    block = sink.getvalue().to_pybytes()
    inserts: list[tuple[str, int]] = []
    writer = sinks_offline.ClickHouseBlocks(Settings(data_dir=tmp_path / "rs"), insert_rows=1000,
                                     insert=lambda s, table, b, client: inserts.append((table, b[0].count(b"\n") + 1)))
    total = 3000
    for done in range(100, total + 1, 100):
        writer.sink_arrow("decisions", [block], 100)
        writer.sink_arrow("transactions", [block], 100)
        if done % 500 == 0:
            writer.sink("alerts", [b'{"alert_id": "a"}'])
        writer.chunk_done(total - done)
    assert writer.close() == {"decisions": 3000, "transactions": 3000, "alerts": 6}
    sizes = [rows for table, rows in inserts if table == "decisions"]
    # insert_rows blocks while more than that is left to score, then as many rows as are left
    assert sizes == [1000, 1000, 500, 300, 100, 100]
    assert sizes == [rows for table, rows in inserts if table == "transactions"]
    # the small table goes with every full hand-over, not all at the end; near the end it
    # stays out of the shrunken ones (an insert's fixed cost) and what is left goes at close
    assert [rows for table, rows in inserts if table == "alerts"] == [2, 2, 2]
    assert [table for table, _ in inserts][-3:] == ["decisions", "transactions", "alerts"]


def test_what_is_queued_at_close_goes_in_on_two_clients_at_once(tmp_path, monkeypatch):
    """Once scoring is over, a second writer with its own chDB client drains the queue
    alongside the first: the first insert is held until the other client has inserted."""
    import threading

    from riskstream.sinks import clickhouse

    inserts: list[tuple[int, str, str]] = []
    closed: list[int] = []
    other_client_inserted = threading.Event()
    held = []

    def recording(client):
        insert, close = client.raw_insert, client.close

        def raw_insert(table, *args, **kw):
            inserts.append((id(client), table, threading.current_thread().name))
            if len(inserts) == 1:
                held.append(other_client_inserted.wait(30))
            elif inserts[0][0] != id(client):
                other_client_inserted.set()
            return insert(table, *args, **kw)

        client.raw_insert = raw_insert
        client.close = lambda: closed.append(id(client)) or close()
        return client

    opened = clickhouse.open_client
    monkeypatch.setattr(clickhouse, "open_client", lambda s: recording(opened(s)))
    settings = Settings(data_dir=tmp_path / "rs")
    writer = sinks_offline.ClickHouseBlocks(settings, insert_rows=1000)
    writer.sink("decisions", [orjson.dumps({"event_id": f"t{i}", "stream": "transactions"}) for i in range(30)])
    writer.sink("alerts", [orjson.dumps({"alert_id": f"a{i}", "event_id": f"t{i}"}) for i in range(5)])
    assert inserts == []  # nothing due before close
    assert writer.close() == {"decisions": 30, "alerts": 5}
    assert held == [True]
    assert len({client for client, _, _ in inserts}) == 2
    assert {thread for _, _, thread in inserts} == {"replay-clickhouse", "replay-clickhouse-tail"}
    assert sorted(table for _, table, _ in inserts) == ["alerts", "decisions"]
    assert sorted(closed) == sorted({client for client, _, _ in inserts})
    counts = query(settings, "SELECT (SELECT count() FROM decisions) AS d, (SELECT count() FROM alerts) AS a")
    assert counts == [{"d": 30, "a": 5}]


def test_arrow_blocks_through_a_sink_go_as_json_rows_even_from_two_versions(tmp_path):
    """When the embedded stack's sink owns chDB, the replay's Arrow blocks go to its JSON
    insert: timestamps as seconds, and blocks of two schemas (a column added) still combine."""
    sent: list[bytes] = []
    writer = sinks_offline.ClickHouseBlocks(Settings(data_dir=tmp_path / "rs"),
                                     insert=lambda s, table, blocks, client: sent.extend(blocks) or 0)
    at = pa.array([1_700_000_000_123], pa.timestamp("ms", tz="UTC"))
    old = pa.table({"event_id": ["a"], "event_time": at})
    new = pa.table({"event_id": ["b"], "event_time": at, "amount": [2.5]})
    writer.sink_arrow("decisions", [old, new], 2)
    assert writer.close() == {"decisions": 2}
    rows = [orjson.loads(line) for blob in sent for line in blob.split(b"\n")]
    assert rows == [{"event_id": "a", "event_time": 1_700_000_000.123, "amount": None},
                    {"event_id": "b", "event_time": 1_700_000_000.123, "amount": 2.5}]


def test_map_renames_columns_and_missing_columns_say_what_to_do(tmp_path, sim):
    tx = sim.transactions
    raw = pa.table({
        "TRANSACTION_ID": tx["transaction_id"], "TX_DATETIME": pa.array(tx["event_time"]).cast(pa.timestamp("ms")),
        "CUSTOMER_ID": tx["customer_id"], "TERMINAL_ID": tx["terminal_id"], "TX_AMOUNT": tx["amount"],
        "TX_FRAUD": tx["is_fraud"],
    })
    path = tmp_path / "handbook.parquet"
    pq.write_table(raw, path)
    settings = Settings(data_dir=tmp_path / "rs")

    with pytest.raises(reading.ReplayError) as err:
        replay.run_replay(args(path, maps=["TX_AMOUNT=amount"]), settings)
    text = str(err.value)
    assert "transaction_id" in text and "event_time" in text and "card_id or customer_id" in text
    assert "TX_DATETIME" in text and "--map" in text

    maps = ["TRANSACTION_ID=transaction_id", "TX_DATETIME=event_time", "CUSTOMER_ID=card_id",
            "TERMINAL_ID=terminal_id", "TX_AMOUNT=amount"]
    assert replay.run_replay(args(path, maps=maps, label_column="TX_FRAUD", label_delay="12h"), settings) == 0
    rows = query(settings, "SELECT event_id, entity_id, toUnixTimestamp64Milli(event_time) AS t FROM decisions FINAL "
                           "ORDER BY event_id LIMIT 1")
    first = int(np.flatnonzero(tx["transaction_id"] == rows[0]["event_id"])[0])
    assert rows[0]["entity_id"] == tx["customer_id"][first]  # CUSTOMER_ID=card_id
    assert int(rows[0]["t"]) == int(tx["event_time"][first])  # timestamps read as epoch ms
    assert count(settings, "SELECT count() AS n FROM decisions FINAL") == len(tx["amount"])


def test_stored_ids_follow_the_fallbacks_when_card_or_merchant_is_empty(tmp_path, sim):
    """The ClickHouse blocks take the file's own string columns (no round trip through Python
    strings), so the card -> customer and merchant -> terminal fallbacks are made there too."""
    tx = {k: np.asarray(v[:400]) for k, v in sim.transactions.items()}
    card = np.where(np.arange(400) % 3 == 0, "", tx["customer_id"].astype(object) + "-card")
    merchant = np.where(np.arange(400) % 4 == 0, None, tx["terminal_id"].astype(object) + "-shop")
    path = tmp_path / "gaps.parquet"
    pq.write_table(pa.table({
        "transaction_id": tx["transaction_id"], "event_time": tx["event_time"], "amount": tx["amount"],
        "card_id": pa.array(card.tolist()), "customer_id": tx["customer_id"],
        "merchant_id": pa.array(merchant.tolist()), "terminal_id": tx["terminal_id"],
    }), path)
    settings = Settings(data_dir=tmp_path / "rs", batch_max_events=150)
    assert replay.run_replay(args(path), settings) == 0
    want_card = {t: (c or cu) for t, c, cu in zip(tx["transaction_id"], card, tx["customer_id"])}
    want_merchant = {t: (m or te) for t, m, te in zip(tx["transaction_id"], merchant, tx["terminal_id"])}
    rows = query(settings, "SELECT transaction_id, card_id, merchant_id FROM transactions FINAL")
    assert len(rows) == 400
    assert {r["transaction_id"]: r["card_id"] for r in rows} == want_card
    assert {r["transaction_id"]: r["merchant_id"] for r in rows} == want_merchant
    decided = query(settings, "SELECT event_id, entity_id FROM decisions FINAL")
    assert {r["event_id"]: r["entity_id"] for r in decided} == want_card


def test_card_numbers_in_the_card_or_customer_id_are_never_stored(tmp_path, sim):
    """A file may carry card numbers in ``card_id`` or ``customer_id``; the decoder tokenizes
    both, and so must an offline replay, in the engine's columns and in what it writes."""
    pans = ["4111111111111111", "5500005555555559"]
    tx = {k: np.asarray(v[:300]) for k, v in sim.transactions.items()}
    card = tx["customer_id"].astype(object) + "-card"
    customer = tx["customer_id"].astype(object).copy()
    card[::7] = ""  # the customer id stands in as the card: a PAN there is a card number too
    customer[::7] = pans[0]
    customer[3::10] = pans[1]
    card[5::11] = pans[1]
    path = tmp_path / "pans.parquet"
    pq.write_table(pa.table({
        "transaction_id": tx["transaction_id"], "event_time": tx["event_time"], "amount": tx["amount"],
        "card_id": pa.array(card.tolist()), "customer_id": pa.array(customer.tolist()),
        "merchant_id": tx["terminal_id"],
    }), path)
    settings = Settings(data_dir=tmp_path / "rs", batch_max_events=100)
    assert replay.run_replay(args(path), settings) == 0
    stored = query(settings, "SELECT transaction_id, card_id, customer_id FROM transactions FINAL")
    decided = query(settings, "SELECT entity_id FROM decisions FINAL")
    assert len(stored) == 300 and len(decided) == 300
    values = [v for r in stored for v in r.values()] + [r["entity_id"] for r in decided]
    assert not any(p in str(v) for v in values for p in pans)
    assert sum(str(r["customer_id"]).startswith("tok_") for r in stored) >= 40


def test_usage_errors_say_what_to_do(tmp_path, sim, capsys):
    path = write_simulation(sim, tmp_path / "tx.parquet")[0]
    settings = Settings(data_dir=tmp_path / "rs")
    with pytest.raises(reading.ReplayError, match="choose one of: transactions"):
        replay.run_replay(args(path, stream="trades"), settings)
    with pytest.raises(reading.ReplayError, match="file not found"):
        replay.run_replay(args(tmp_path / "nope.csv"), settings)
    with pytest.raises(reading.ReplayError, match="30m, 12h, 7d"):
        replay.run_replay(args(path, label_column="is_fraud", label_delay="7 days"), settings)
    with pytest.raises(reading.ReplayError, match="not in tx.parquet; its columns are"):
        replay.run_replay(args(path, maps=["TX_AMOUNT=amount"]), settings)
    # Online without a broker: the settings' error, which says to start the stack.
    with pytest.raises(ConfigError, match="riskstream stack up"):
        replay.run_replay(args(path, offline=False), settings)
    assert reading.parse_duration("7d") == 7 * DAY_MS and reading.parse_duration("30m") == 1_800_000
    # Through the CLI: exit code 2 and the message on stderr, no traceback.
    from riskstream.cli import main

    assert main(["replay", str(path), "--stream", "trades", "--offline"]) == 2
    assert "choose one of" in capsys.readouterr().err


def test_bad_rows_are_dead_lettered_with_the_reason(tmp_path, sim):
    tx = {k: v[:300].copy() for k, v in sim.transactions.items()}
    tx["amount"][[10, 20, 30]] = [-5.0, np.nan, 1e12]
    tx["transaction_id"][40] = ""
    tx["event_time"][50] = tx["event_time"][50] // 1000  # seconds, not milliseconds
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({k: v for k, v in tx.items() if k != "fraud_scenario"}), path)
    settings = Settings(data_dir=tmp_path / "rs")
    assert replay.run_replay(args(path), settings) == 0
    dead = query(settings, "SELECT offset, error, payload FROM dead_letters FINAL ORDER BY offset")
    by_row = {int(d["offset"]): d for d in dead}
    assert set(by_row) == {10, 20, 30, 40, 50}
    assert "outside [0" in by_row[10]["error"] and "outside [0" in by_row[30]["error"]
    assert "missing required field 'amount'" in by_row[20]["error"]
    assert "transaction_id" in by_row[40]["error"] and "before 2000-01-01" in by_row[50]["error"]
    assert orjson.loads(by_row[10]["payload"])["amount"] == -5.0
    assert count(settings, "SELECT count() AS n FROM decisions FINAL") == 295


def test_a_files_bad_rows_get_the_reason_the_decoder_gives_them():
    from riskstream.schemas.events import InvalidEvent
    from riskstream.schemas.pan import PanTokenizer
    from riskstream.schemas.transactions import transaction_row

    now = 1_763_800_000_000
    base = {"transaction_id": "t", "event_time": now - 60_000, "card_id": "k1", "customer_id": "c1",
            "merchant_id": "m1", "terminal_id": "T1", "amount": 12.5, "lat": 52.0, "lon": 4.0, "device_id": "d1"}
    long = "x" * 129
    cases = [
        {}, {"transaction_id": ""}, {"transaction_id": long}, {"event_time": 1_700_000_000},
        {"event_time": now + 2 * DAY_MS}, {"card_id": "", "customer_id": ""}, {"card_id": "", "customer_id": long},
        {"card_id": long}, {"customer_id": long}, {"merchant_id": "", "terminal_id": ""},
        {"merchant_id": "", "terminal_id": long}, {"terminal_id": long}, {"amount": None}, {"amount": -1.0},
        {"amount": 1e13}, {"lat": 91.0}, {"lon": -181.0}, {"device_id": long},
        # two problems: the first in the decoder's order is the reason
        {"transaction_id": long, "amount": -1.0}, {"card_id": long, "merchant_id": "", "terminal_id": ""},
        {"amount": -1.0, "device_id": long}, {"event_time": 1_700_000_000, "card_id": "", "customer_id": ""},
        {"lat": 91.0, "customer_id": long}, {"merchant_id": "", "terminal_id": "", "amount": None},
    ]
    rows = [{**base, "transaction_id": f"t{i}", **case} for i, case in enumerate(cases)]
    table = pa.Table.from_pylist(rows)
    times, time_ok = reading.times_to_ms(table.column("event_time"))
    _, _, why = reading.validate_transactions(table, times, time_ok, 1e9, now)
    tokenizer = PanTokenizer(b"k" * 32)
    for i, row in enumerate(rows):
        try:
            transaction_row(row, tokenizer, 1e9, now)
            expected = None
        except InvalidEvent as exc:
            expected = str(exc)
        assert why.reason[i] == expected, (cases[i], why.reason[i], expected)


@pytest.mark.both_brokers
def test_online_replay_is_decided_by_the_worker(stack, worker_factory, tmp_path, sim, capsys):
    tx = {k: v[:500] for k, v in sim.transactions.items()}
    path = tmp_path / "tx500.csv"
    import pyarrow.csv as pacsv

    pacsv.write_csv(pa.table(tx), path)
    worker = worker_factory()
    assert replay.run_replay(args(path, offline=False, label_column="is_fraud", label_delay="1h"), stack) == 0
    out = capsys.readouterr().out
    assert "produced 500 transactions" in out
    wait_for(lambda: count(stack, "SELECT count() AS n FROM decisions FINAL WHERE stream = 'transactions'"),
             90, "500 decisions in ClickHouse", worker, ok=lambda n: n >= 500)
    assert count(stack, "SELECT count() AS n FROM decisions FINAL WHERE stream = 'transactions'") == 500
    frauds = int(tx["is_fraud"].sum())
    wait_for(lambda: count(stack, "SELECT count() AS n FROM labels FINAL"), 30, f"{frauds} labels", worker,
             ok=lambda n: n == frauds)
