"""`riskstream rules backtest` on stored history: a simulated file replayed offline into chDB
(as the worker scores it), then backtested; the report must match the compiled rules
evaluated over features computed afresh from the file."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from riskstream.cli import main
from riskstream.detectors.features import FEATURE_NAMES, FeatureEngine
from riskstream.rules.compiler import backtest, compile_rule_set
from riskstream.rules.history import rebuild_history
from riskstream.rules.language import validate_rule_set
from riskstream.schemas.events import DAY_MS
from riskstream.schemas.transactions import TransactionBatch
from riskstream.settings import Settings
from riskstream.simulate import simulate, write_simulation
from riskstream.streams import offline, reading
from riskstream.streams.driver import Driver
from riskstream.streams.processors import transaction_rule_columns

LABEL_DELAY_MS = 7 * DAY_MS
# The simulation starts 2024-01-01 and runs 10 days. The period's first frauds are labelled
# 7 days later, after the last stored transaction: they still count as fraud.
PERIOD = (date(2024, 1, 7), date(2024, 1, 11))
RULES = """\
version: "bt1"
rules:
  - {id: big_amount, version: 1, description: Large payment, action: review,
     reason: {code: BIG, text: "amount {amount}"}, when: "amount > 150"}
  - {id: card_burst, version: 1, description: Several payments within the hour, action: review,
     reason: {code: BURST, text: burst}, when: "card_txn_count_1h >= 2"}
  - {id: first_seen_card, version: 1, description: A card never seen before, action: step_up,
     reason: {code: NEW, text: new card}, when: "card_first_seen == 1"}
  - {id: card_with_fraud, version: 1, description: A card with confirmed fraud, action: decline,
     reason: {code: FRAUD_HISTORY, text: history}, when: "card_fraud_rate_30d > 0.01"}
  - {id: ecom_new_device, version: 1, description: Online from a new device, action: review, mode: shadow,
     reason: {code: NEW_DEVICE, text: device}, when: "channel == 'ecom' and card_new_device == 1"}
  - {id: model_high, version: 1, description: The model is fairly sure, action: review,
     reason: {code: MODEL, text: model}, when: "score >= 0.2"}
"""


class CapturingDriver(Driver):
    """The worker's driver, keeping what it scored: (transaction ids, features, score)."""

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self.scored: list = []

    def process_batch(self, batch, dead=None, values=None):
        out = super().process_batch(batch, dead, values)
        if out.scored is not None:
            self.scored.append(out.scored)
        return out


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """A chDB data dir filled by the offline replay, plus what the worker computed."""
    root = tmp_path_factory.mktemp("backtest")
    sim = simulate(days=10, customers=250, terminals=50, seed=11, fraud_rate=0.02, with_market=False,
                   with_credit=False)
    path = write_simulation(sim, root / "tx.parquet")[0]
    # Small batches: the replay learns a label at the next batch start, so this keeps the
    # worker's card fraud rates close to the exact ones.
    # The model's own probability from its warm-up on (no proof, no calibration): the rule on
    # `score` needs scores to act on in a 10-day history.
    settings = Settings(data_dir=root / "rs", batch_max_events=100, fraud_calibration="off", fraud_proof_auc=0)
    data = reading.load_input(path, "transactions", settings=settings, label_column="is_fraud",
                             label_delay_ms=LABEL_DELAY_MS)
    engine = CapturingDriver(settings)
    offline.replay_offline(data, settings, driver=engine)
    rules_file = root / "rules.yaml"
    rules_file.write_text(RULES)
    return sim, settings, engine, rules_file


def fresh_features(sim) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Features computed from the file itself, in one batch, with every chargeback folded in
    at its label time: (transaction_id, event_time_ms, features, is_fraud)."""
    tx = sim.transactions
    order = np.lexsort((np.asarray(tx["transaction_id"]).astype(str), tx["event_time"]))
    cols = {k: np.asarray(v)[order] for k, v in tx.items()}
    fraud = cols["is_fraud"].astype(bool)
    engine = FeatureEngine()
    event_time = cols["event_time"][fraud].astype(np.int64)
    # As a chargeback arrives: for the card, merchant and terminal of the payment.
    engine.apply_labels({entity: cols[column][fraud].astype(object) for entity, column in
                         (("card", "card_id"), ("merchant", "merchant_id"), ("terminal", "terminal_id"))},
                        event_time, event_time + LABEL_DELAY_MS, np.ones(int(fraud.sum()), dtype=np.int8))
    batch = TransactionBatch.from_columns({k: v for k, v in cols.items() if k != "is_fraud"})
    features = engine.compute(batch)
    features.update({"card_id": batch.card_id, "merchant_id": batch.merchant_id, **batch.optional})
    return batch.transaction_id, batch.event_time_ms, features, fraud


def in_period(event_time_ms: np.ndarray) -> np.ndarray:
    lo, hi = (int(np.datetime64(d, "ms").astype(np.int64)) for d in PERIOD)
    return (event_time_ms >= lo) & (event_time_ms < hi)


def test_rebuilt_features_are_the_workers(history):
    sim, settings, engine, _ = history
    got = rebuild_history(settings, *PERIOD)
    assert set(got.columns) == set(transaction_rule_columns())  # no more, no less than the worker's rules see
    ids, times, fresh, fraud = fresh_features(sim)
    keep = in_period(times)
    assert got.n == int(keep.sum()) > 500
    assert (got.transaction_id == ids[keep]).all() and (got.event_time_ms == times[keep]).all()
    for name in FEATURE_NAMES:
        np.testing.assert_array_equal(got.columns[name], fresh[name][keep], err_msg=name)
    # The worker's own features and scores, as it decided each transaction.
    worker = {tid: (s.features, s.score, i) for s in engine.scored for i, tid in enumerate(s.batch.transaction_id)}
    rows = [worker[tid] for tid in got.transaction_id]
    for name in FEATURE_NAMES:
        if "fraud_rate" in name:
            continue  # the offline replay learns a label up to one batch late; the rebuild never does
        np.testing.assert_array_equal(got.columns[name], [f[name][i] for f, _, i in rows], err_msg=name)
    np.testing.assert_array_equal(got.columns["score"], np.asarray([s[i] for _, s, i in rows], dtype=np.float32))
    # Fraud: every period transaction labelled, even though its label came after the period.
    assert (got.is_fraud == fraud[keep]).all() and got.is_fraud.sum() >= 3
    assert got.labels_applied > 0 and (fresh["card_fraud_rate_30d"][keep] > 0.01).any()
    # Chargebacks name the terminal: compromised terminals show in their fraud rate (prior 0.002).
    assert (got.columns["terminal_fraud_rate_30d"] > 0.01).any()
    # Without a warm-up, cards seen before the period read as new: the warm-up matters.
    cold = rebuild_history(settings, *PERIOD, warmup_days=0)
    assert cold.columns["card_first_seen"].sum() > got.columns["card_first_seen"].sum()


def _report_rows(out: str) -> dict[str, tuple[int, float, float]]:
    """rule id -> (hits, precision, recall) from the printed report (n/a -> nan)."""
    rows = {}
    for line in out.splitlines():
        m = re.match(r"^(.+?)(?: \(shadow\))?\s{2,}\S+\s+([\d,]+)\s+(n/a|[\d.]+%)\s+(n/a|[\d.]+%)\s", line)
        if m:
            pct = [float("nan") if v == "n/a" else float(v[:-1]) / 100 for v in m.group(3, 4)]
            rows[m.group(1)] = (int(m.group(2).replace(",", "")), *pct)
    return rows


def test_backtest_command_matches_rules_over_fresh_features(history, monkeypatch, capsys):
    sim, settings, engine, rules_file = history
    monkeypatch.setenv("RISKSTREAM_DATA_DIR", str(settings.data_dir))
    assert main(["rules", "backtest", str(rules_file), "--from", str(PERIOD[0]), "--to", str(PERIOD[1])]) == 0
    captured = capsys.readouterr()
    rows = _report_rows(captured.out)
    assert f"Next: riskstream rules publish {rules_file}" in captured.out
    assert "warm-up" in captured.err and "100.0%" in captured.err  # progress, then a summary line

    ids, times, fresh, fraud = fresh_features(sim)
    keep = in_period(times)
    worker_score = {tid: s.score[i] for s in engine.scored for i, tid in enumerate(s.batch.transaction_id)}
    columns = {k: v[keep] for k, v in fresh.items()}
    columns["score"] = np.asarray([worker_score[t] for t in ids[keep]], dtype=np.float32)
    compiled = compile_rule_set(validate_rule_set(RULES, "rules.yaml"), list(columns))
    hits = compiled.evaluate(columns).hits
    expected = backtest(compiled, columns, fraud[keep], times[keep] // DAY_MS)
    n_fraud = int(fraud[keep].sum())
    assert f"{int(keep.sum()):,} transactions, {n_fraud:,} fraud, 4 day(s)" in captured.out

    assert set(rows) == set(compiled.rule_ids) | {"any active rule"}
    for r, rule_id in enumerate(compiled.rule_ids):
        n_hits, precision, recall = rows[rule_id]
        assert n_hits == int(hits[r].sum()) == expected.rules[r].hits, rule_id
        tp = int((hits[r] & fraud[keep]).sum())
        if n_hits:
            assert 0.0 <= precision <= 1.0 and abs(precision - tp / n_hits) <= 0.0005, rule_id
        else:
            assert precision != precision  # n/a, not 0%
        assert 0.0 <= recall <= 1.0 and abs(recall - tp / n_fraud) <= 0.0005, rule_id
    # Every rule is exercised: each hits something and none hits everything.
    assert all(0 < rows[r][0] < keep.sum() for r in compiled.rule_ids)
    assert rows["any active rule"][0] == expected.combined.hits


def test_backtest_on_an_empty_period_says_what_to_do(history, monkeypatch, capsys):
    _, settings, _, rules_file = history
    monkeypatch.setenv("RISKSTREAM_DATA_DIR", str(settings.data_dir))
    assert main(["rules", "backtest", str(rules_file), "--from", "2023-06-01", "--to", "2023-06-08"]) == 1
    err = capsys.readouterr().err
    assert "the ClickHouse history is empty between 2023-06-01 and 2023-06-08" in err
    assert "run the worker" in err
    with pytest.raises(SystemExit, match="must be after --from"):
        main(["rules", "backtest", str(rules_file), "--from", "2024-01-08", "--to", "2024-01-08"])


def test_history_of_a_new_data_dir_is_empty(tmp_path: Path):
    got = rebuild_history(Settings(data_dir=tmp_path / "rs"), *PERIOD)
    assert got.n == 0 and got.columns == {}
