"""The simulator: determinism, schema, scenarios that behave as described, labels that point at
real events, file round trips, and the CLI command."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from riskstream import cli
from riskstream.schemas.events import DAY_MS
from riskstream.schemas.pan import PanTokenizer
from riskstream.schemas.registry import STREAMS
from riskstream.schemas.transactions import TransactionBatch, decode_transactions
from riskstream.sim_world import SCENARIOS, STREAM_COLUMNS, distance_km
from riskstream.simulate import Simulation, read_simulation, simulate, stream_paths, write_simulation

GRID_COUNTRIES = {"FR", "BE", "NL", "LU", "DE", "CH", "AT", "IT", "CZ"}


@pytest.fixture(scope="module")
def sim() -> Simulation:
    return simulate(days=10, customers=1500, terminals=200, seed=3)


@pytest.fixture(scope="module")
def small() -> Simulation:
    return simulate(days=2, customers=200, terminals=40, seed=11)


def assert_same(a: Simulation, b: Simulation) -> None:
    for name, columns in a.streams().items():
        other = b.streams()[name]
        assert columns.keys() == other.keys(), name
        for col, values in columns.items():
            assert values.dtype == other[col].dtype, (name, col)
            assert np.array_equal(values, other[col]), (name, col)


def test_same_arguments_same_streams_and_another_seed_differs(small):
    assert_same(small, simulate(days=2, customers=200, terminals=40, seed=11))
    other = simulate(days=2, customers=200, terminals=40, seed=12)
    assert not np.array_equal(other.transactions["amount"][:100], small.transactions["amount"][:100])


def test_market_and_credit_switches_leave_the_transactions_alone(small):
    bare = simulate(days=2, customers=200, terminals=40, seed=11, with_market=False, with_credit=False)
    for col, values in small.transactions.items():
        assert np.array_equal(values, bare.transactions[col]), col
    assert len(bare.market["event_time"]) == 0 and len(bare.positions["event_time"]) == 0
    assert len(bare.loan_applications["event_time"]) == 0
    assert set(bare.labels["stream"]) == {"transactions"}


def test_every_stream_has_its_columns_and_dtypes(sim):
    for name, schema in STREAM_COLUMNS.items():
        columns = sim.streams()[name]
        assert list(columns) == list(schema), name
        lengths = {len(v) for v in columns.values()}
        assert len(lengths) == 1 and lengths.pop() > 0, name
        for col, kind in schema.items():
            values = columns[col]
            if kind == "str":
                assert values.dtype == object and all(type(v) is str for v in values[:500]), (name, col)
            else:
                assert values.dtype == np.dtype(kind), (name, col)


def test_streams_are_sorted_and_inside_the_span(sim):
    for name in ("transactions", "market", "positions", "loan_applications"):
        times = sim.streams()[name]["event_time"]
        assert (np.diff(times) >= 0).all(), name
        assert times[0] >= sim.start_ms and times[-1] < sim.end_ms, name
    label_times = sim.labels["label_time"]
    assert (np.diff(label_times) >= 0).all()
    assert label_times[-1] < sim.end_ms


def test_transaction_values_follow_the_schema_rules(sim):
    tx = sim.transactions
    n = len(tx["amount"])
    assert n > 1500 * 10  # ~2.5 a customer a day
    assert len(np.unique(tx["transaction_id"])) == n
    assert (tx["amount"] >= 0).all() and np.isfinite(tx["amount"]).all()
    assert set(tx["channel"]) == {"pos", "ecom", "atm"}
    assert all(len(m) == 4 and m.isdigit() for m in set(tx["mcc"]))
    assert all(len(c) == 2 and c.isupper() for c in set(tx["country"]))
    assert {"EUR", "CHF"} <= set(tx["currency"])
    assert (np.abs(tx["lat"]) <= 90).all() and (np.abs(tx["lon"]) <= 180).all()
    online = tx["channel"] == "ecom"
    assert (tx["device_id"][online] != "").all() and (tx["ip"][online] != "").all()
    assert (tx["device_id"][~online] == "").all() and (tx["ip"][~online] == "").all()
    assert np.array_equal(tx["is_fraud"] == 1, tx["fraud_scenario"] != "")
    assert set(tx["fraud_scenario"]) == {""} | set(SCENARIOS)
    cards_per_customer = {}
    for customer, card in zip(tx["customer_id"], tx["card_id"]):
        cards_per_customer.setdefault(customer, set()).add(card)
    assert {len(cards) for cards in cards_per_customer.values()} == {1, 2}
    terminals_per_merchant = {}
    for merchant, terminal in zip(tx["merchant_id"], tx["terminal_id"]):
        terminals_per_merchant.setdefault(merchant, set()).add(terminal)
    assert max(len(t) for t in terminals_per_merchant.values()) > 1


def test_every_scenario_is_present_at_a_plausible_rate(sim):
    counts = sim.scenario_counts()
    n = len(sim.transactions["amount"])
    assert 0.004 < sum(counts.values()) / n < 0.012
    for scenario, count in counts.items():
        assert count >= 10, (scenario, counts)
        assert count / n < 0.004, (scenario, counts)


def _previous_payment(tx):
    """Per transaction: minutes and km since the previous payment of the same card."""
    order = np.lexsort((tx["event_time"], tx["card_id"]))
    card = tx["card_id"][order]
    same = np.r_[False, card[1:] == card[:-1]]
    minutes = np.r_[np.inf, np.diff(tx["event_time"][order]) / 60_000]
    km = np.r_[0.0, distance_km(tx["lat"][order][:-1], tx["lon"][order][:-1], tx["lat"][order][1:], tx["lon"][order][1:])]
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    return np.where(same, minutes, np.inf)[back], np.where(same, km, 0.0)[back]


def test_scenarios_show_the_behaviour_a_model_should_learn(sim):
    tx = sim.transactions
    scenario = tx["fraud_scenario"]
    legit = scenario == ""
    minutes, km = _previous_payment(tx)
    speed = km / np.maximum(minutes, 1) * 60

    testing = scenario == "card_testing"
    assert (tx["channel"][testing] == "ecom").all()
    assert np.mean(tx["amount"][testing] <= 3) > 0.8
    assert np.mean(minutes[testing] < 10) > 0.6 > 10 * np.mean(minutes[legit] < 10)

    geo = scenario == "geo_impossible"
    assert np.mean(speed[geo] > 500) > 0.4 > 20 * np.mean(speed[legit] > 500)

    # Amount versus the card's own habit: the median legit amount per card.
    cards, card_index = np.unique(tx["card_id"], return_inverse=True)
    habit = np.array([np.median(tx["amount"][legit & (card_index == i)] if (legit & (card_index == i)).any() else [1.0])
                      for i in range(len(cards))])
    ratio = tx["amount"] / np.maximum(habit[card_index], 1.0)
    for big in ("account_takeover", "high_amount"):
        assert np.median(ratio[scenario == big]) > 3 > np.median(ratio[legit]), big
    takeover = scenario == "account_takeover"
    assert (tx["channel"][takeover] == "ecom").all()
    legit_devices = set(tx["device_id"][legit & (tx["channel"] == "ecom")])
    assert np.mean([d not in legit_devices for d in tx["device_id"][takeover]]) > 0.9

    compromised = scenario == "compromised_terminal"
    hit_terminals, per_terminal = np.unique(tx["terminal_id"][compromised], return_counts=True)
    assert len(hit_terminals) < 0.1 * len(np.unique(tx["terminal_id"]))
    assert per_terminal.max() >= 3


def test_no_single_column_gives_the_fraud_away(sim):
    tx = sim.transactions
    fraud = tx["is_fraud"] == 1
    foreign = ~np.isin(tx["country"], list(GRID_COUNTRIES))
    assert foreign[~fraud].sum() > 0 and np.mean(fraud[foreign]) < 0.8
    assert np.mean(fraud[tx["amount"] > 300]) < 0.5
    assert np.mean(fraud[tx["amount"] <= 3]) < 0.5
    assert np.mean(fraud[tx["amount"] == 0]) < 0.8


def test_labels_point_at_real_events_and_come_after_them(sim):
    labels, tx, apps = sim.labels, sim.transactions, sim.loan_applications
    tx_time = dict(zip(tx["transaction_id"], tx["event_time"]))
    tx_fraud = dict(zip(tx["transaction_id"], tx["is_fraud"]))
    app_time = dict(zip(apps["application_id"], apps["event_time"]))
    assert set(labels["stream"]) == {"transactions", "loan_applications"}
    for event_id, stream, label, positive, when in zip(labels["event_id"], labels["stream"], labels["label"],
                                                        labels["is_positive"], labels["label_time"]):
        if stream == "transactions":
            assert when >= tx_time[event_id]
            assert positive == tx_fraud[event_id] == (label in ("chargeback", "analyst_fraud"))
        else:
            assert when >= app_time[event_id]
            assert positive == (label == "default")
    assert {"chargeback", "analyst_fraud", "analyst_legit", "default", "repaid"} == set(labels["label"])
    assert len(np.unique(labels["event_id"][labels["stream"] == "transactions"])) == \
        int((labels["stream"] == "transactions").sum())


def test_every_fraud_is_labelled_once_the_chargeback_window_has_passed():
    sim = simulate(days=50, customers=300, terminals=40, seed=5, with_market=False, with_credit=False)
    tx = sim.transactions
    old_fraud = (tx["is_fraud"] == 1) & (tx["event_time"] < sim.end_ms - 36 * DAY_MS)
    assert old_fraud.sum() > 20
    labelled = set(sim.labels["event_id"][sim.labels["is_positive"] == 1])
    assert all(t in labelled for t in tx["transaction_id"][old_fraud])


def test_loan_defaults_follow_debt_and_credit_score():
    sim = simulate(days=60, customers=1500, terminals=40, seed=2, with_market=False)
    apps, labels = sim.loan_applications, sim.labels
    outcome = labels["stream"] == "loan_applications"
    row = {a: i for i, a in enumerate(apps["application_id"])}
    rows = np.array([row[a] for a in labels["event_id"][outcome]])
    defaulted = labels["is_positive"][outcome] == 1
    score = apps["credit_score"][rows]
    debt_to_income = apps["existing_debt"][rows] / apps["income"][rows]
    assert len(rows) > 200
    assert defaulted[score < 620].mean() > 2 * defaulted[score >= 720].mean()
    assert defaulted[debt_to_income > 0.5].mean() > defaulted[debt_to_income < 0.2].mean()


def test_market_prices_walk_and_positions_trade_at_market_prices(sim):
    market, positions = sim.market, sim.positions
    assert (market["price"] > 0).all() and (market["volume"] >= 0).all()
    last_price = {}
    for name in np.unique(market["instrument"]):
        one = market["instrument"] == name
        log_returns = np.diff(np.log(market["price"][one]))
        assert 0 < log_returns.std() < 0.05, name
        last_price[name] = dict(zip(market["event_time"][one], market["price"][one]))
    for name, when, price in zip(positions["instrument"], positions["event_time"], positions["price"]):
        assert last_price[name][when] == price
    assert len(np.unique(positions["portfolio_id"])) >= 10


def test_transactions_pass_the_engine_decoder(small):
    tx = small.transactions
    engine_columns = [c for c in tx if c not in ("is_fraud", "fraud_scenario")]
    payloads = [orjson.dumps(dict(zip(engine_columns, row)))
                for row in zip(*(tx[c].tolist() for c in engine_columns))]
    batch, dead = decode_transactions(payloads, tokenizer=PanTokenizer(b"k" * 32))
    assert dead == []
    assert batch.n == len(payloads)
    assert np.array_equal(batch.card_id, tx["card_id"]) and np.array_equal(batch.amount, tx["amount"])
    direct = TransactionBatch.from_columns(tx)
    assert np.array_equal(direct.event_time_ms, batch.event_time_ms)
    assert np.array_equal(direct.optional["device_id"], batch.optional["device_id"])


def test_other_streams_pass_the_engine_validators(small):
    for name in ("labels", "market", "positions", "loan_applications"):
        columns = small.streams()[name]
        for row in list(zip(*(columns[c].tolist() for c in columns)))[:300]:
            obj = orjson.loads(orjson.dumps(dict(zip(columns, row))))
            STREAMS[name].validate_row(obj, small.end_ms)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_files_round_trip(small, tmp_path, suffix):
    out = tmp_path / "sim" / f"tx{suffix}"
    written = write_simulation(small, out)
    assert written == list(stream_paths(out).values())
    assert all(p.exists() and p.stat().st_size > 0 for p in written)
    assert_same(small, read_simulation(out))


def test_streams_without_rows_are_not_written(tmp_path):
    bare = simulate(days=1, customers=100, terminals=40, with_market=False, with_credit=False)
    written = write_simulation(bare, tmp_path / "tx.parquet")
    assert [p.name for p in written] == ["tx.parquet", "tx.labels.parquet"]


def test_cli_writes_the_files_and_prints_a_summary(tmp_path, capsys):
    out = tmp_path / "tx.csv"
    code = cli.main(["simulate", "--days", "2", "--customers", "200", "--terminals", "40", "--out", str(out),
                     "--seed", "11", "--no-market", "--start", "2024-01-01"])
    captured = capsys.readouterr()
    assert code == 0
    assert out.exists() and (tmp_path / "tx.labels.csv").exists() and (tmp_path / "tx.loan_applications.csv").exists()
    assert not (tmp_path / "tx.market.csv").exists()
    for scenario in SCENARIOS:
        assert scenario in captured.out
    assert f"riskstream replay {out} --stream transactions" in captured.out
    assert "simulate [" in captured.err
    back = read_simulation(out)
    assert len(back.transactions["amount"]) == len(simulate(days=2, customers=200, terminals=40, seed=11,
                                                            with_market=False).transactions["amount"])


def test_cli_refuses_an_unknown_suffix_and_bad_sizes(tmp_path, capsys):
    assert cli.main(["simulate", "--out", str(tmp_path / "tx.json"), "--quiet"]) == 2
    assert cli.main(["simulate", "--out", str(tmp_path / "tx.csv"), "--terminals", "5", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert ".csv or .parquet" in err and "terminals" in err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("kwargs", [dict(days=0), dict(customers=0), dict(terminals=10), dict(fraud_rate=0.9)])
def test_invalid_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        simulate(**kwargs)


def test_fraud_rate_zero_means_no_fraud():
    quiet = simulate(days=2, customers=100, terminals=40, fraud_rate=0.0, with_market=False, with_credit=False)
    assert quiet.transactions["is_fraud"].sum() == 0
    assert set(quiet.scenario_counts().values()) == {0}


def test_the_demo_stream_from_a_given_day_is_the_same_every_run():
    # `riskstream demo --start DATE`: runs of two builds can be compared on the same traffic
    # (by default the stream ends an hour before now, so it moves with the clock).
    from datetime import datetime, timezone

    from riskstream.demo import build_stream

    start_ms = int(datetime(2026, 9, 1, tzinfo=timezone.utc).timestamp() * 1000)
    first, again = (build_stream(2000, progress=lambda _: None, start_ms=start_ms) for _ in range(2))
    assert first.messages == again.messages and first.transactions == 2000
    first_payment = next(v for topic, key, v in first.messages if topic == "transactions" and not key.startswith(b"bad-"))
    assert start_ms <= orjson.loads(first_payment)["event_time"] < start_ms + DAY_MS
