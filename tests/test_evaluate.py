"""Quality metrics against scikit-learn / plain Python, and `riskstream evaluate` on chDB."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import orjson
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from riskstream.detectors.evaluate import average_precision, card_precision_at_k, roc_auc


@pytest.mark.parametrize("seed", range(6))
def test_roc_auc_and_average_precision_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 3000))
    y = (rng.random(n) < rng.uniform(0.01, 0.5)).astype(int)
    y[0], y[1] = 0, 1  # both classes present
    # Rounded scores: many ties, which is where hand-written metrics usually go wrong.
    score = np.round(rng.random(n) + 0.5 * y * rng.random(n), int(rng.integers(1, 4)))
    assert roc_auc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    assert average_precision(y, score) == pytest.approx(average_precision_score(y, score), abs=1e-12)


def test_metrics_are_nan_without_both_classes():
    assert math.isnan(roc_auc(np.zeros(5), np.arange(5)))
    assert math.isnan(average_precision(np.zeros(5), np.arange(5)))
    assert roc_auc(np.array([0, 1]), np.array([0.2, 0.1])) == 0.0


def _card_precision_reference(day, card, score, fraud, k):
    best: dict = defaultdict(lambda: -math.inf)
    frauded: dict = defaultdict(int)
    for d, c, s, f in zip(day.tolist(), card.tolist(), score.tolist(), fraud.tolist()):
        best[(d, c)] = max(best[(d, c)], s)
        frauded[(d, c)] = max(frauded[(d, c)], f)
    per_day = []
    for d in sorted(set(day.tolist())):
        cards = sorted((c for (dd, c) in best if dd == d), key=lambda c: -best[(d, c)])
        per_day.append(sum(frauded[(d, c)] for c in cards[:k]) / k)
    return sum(per_day) / len(per_day)


@pytest.mark.parametrize("seed", range(4))
def test_card_precision_at_k_matches_reference(seed):
    rng = np.random.default_rng(seed)
    n = 4000
    day = rng.integers(0, 7, n)
    card = np.array([f"card{c}" for c in rng.integers(0, 400, n)], dtype=object)
    score = rng.random(n)  # continuous: no ties, so the top k is unambiguous
    fraud = (rng.random(n) < 0.05 + 0.3 * score * (score > 0.8)).astype(np.int8)
    for k in (1, 10, 100):
        assert card_precision_at_k(day, card, score, fraud, k) == pytest.approx(
            _card_precision_reference(day, card, score, fraud, k), abs=1e-12)


def test_card_precision_counts_a_card_once_per_day():
    # card a: two frauds on day 0 is still one frauded card; day 1 has only 1 card for k=2.
    day = np.array([0, 0, 0, 1])
    card = np.array(["a", "a", "b", "a"])
    score = np.array([0.9, 0.8, 0.1, 0.5])
    fraud = np.array([1, 1, 0, 1])
    assert card_precision_at_k(day, card, score, fraud, k=2) == pytest.approx((1 / 2 + 1 / 2) / 2)


# ----------------------------------------------------------------------------------------
# riskstream evaluate against a chDB directory filled here
# ----------------------------------------------------------------------------------------
DAY_S = 86_400
JAN1 = 1_704_067_200  # 2024-01-01T00:00Z


def _store(tmp_path, decisions: list[dict], labels: list[dict]) -> None:
    """Decision and label rows into a fresh chDB under ``tmp_path``, as the sink writes them."""
    from riskstream.settings import Settings
    from riskstream.sinks.clickhouse import ensure_schema, open_client

    client = open_client(Settings(data_dir=tmp_path))
    ensure_schema(client)
    client.raw_insert("decisions", None, b"\n".join(orjson.dumps(r) for r in decisions), fmt="JSONEachRow")
    client.raw_insert("labels", None, b"\n".join(orjson.dumps(r) for r in labels), fmt="JSONEachRow")
    client.close()


def test_evaluate_command_on_chdb(tmp_path, monkeypatch, capsys):
    from riskstream.cli import main

    rng = np.random.default_rng(3)
    n = 600
    t = JAN1 + rng.uniform(0, 3 * DAY_S, n)
    card = np.array([f"c{i}" for i in rng.integers(0, 80, n)])
    fraud = rng.random(n) < 0.1
    score = np.clip(rng.random(n) * 0.6 + 0.4 * fraud, 0, 1).astype(np.float32)
    decisions = [
        {"event_id": f"t{i}", "stream": "transactions", "entity_id": card[i], "event_time": float(t[i]),
         "decided_at": float(t[i]) + 0.01, "score": float(score[i]), "decision": "approve", "reasons": [],
         "rules_version": "r1", "model_version": "fraud-lr0-z0", "amount": 10.0}
        for i in range(n)
    ]
    # A decision outside the window and one on another stream must not count.
    decisions.append({**decisions[0], "event_id": "late", "event_time": JAN1 + 5 * DAY_S, "decided_at": JAN1 + 5 * DAY_S})
    decisions.append({**decisions[0], "event_id": "loan1", "stream": "loan_applications"})
    # Re-delivered decision (same key): FINAL keeps one row.
    decisions.append({**decisions[1], "decided_at": decisions[1]["decided_at"] + 1})
    labels = [{"event_id": f"t{i}", "stream": "transactions", "label": "chargeback", "is_positive": 1,
               "label_time": float(t[i]) + 3 * DAY_S, "entity_id": card[i], "source": "issuer"}
              for i in np.nonzero(fraud)[0]]
    labels += [{"event_id": "t0", "stream": "transactions", "label": "analyst_legit", "is_positive": 0,
                "label_time": float(t[0]) + 3600, "entity_id": card[0], "source": "analyst"}]

    _store(tmp_path, decisions, labels)

    monkeypatch.setenv("RISKSTREAM_DATA_DIR", str(tmp_path))
    assert main(["evaluate", "--from", "2024-01-01", "--to", "2024-01-03"]) == 0
    out = capsys.readouterr().out
    assert f"Decisions 2024-01-01 .. 2024-01-03 (stream 'transactions'): {n:,}" in out
    assert f"frauds: {int(fraud.sum()):,}" in out
    auc = roc_auc(fraud, score)
    ap = average_precision(fraud, score)
    cp = card_precision_at_k((t // DAY_S).astype(int), card, score, fraud, k=100)
    assert f"ROC AUC                 {auc:.3f}" in out
    assert f"average precision       {ap:.3f}" in out
    assert f"Card Precision@100/day  {cp:.3f}" in out
    assert "Next:" in out

    # An empty window says so and points somewhere.
    assert main(["evaluate", "--from", "2023-01-01", "--to", "2023-01-02"]) == 1
    assert "Nothing to evaluate" in capsys.readouterr().out


def test_evaluate_reports_the_cold_start_apart_and_each_model_on_its_own_rows(tmp_path, monkeypatch, capsys):
    from riskstream.cli import main

    rng = np.random.default_rng(5)
    n = 900
    t = np.sort(JAN1 + rng.uniform(0, 3 * DAY_S, n))
    card = np.array([f"c{i}" for i in rng.integers(0, 120, n)])
    fraud = rng.random(n) < 0.1
    score = np.clip(rng.random(n) * 0.8 + 0.2 * fraud, 0, 1).astype(np.float32)
    shadow = np.clip(rng.random(n) * 0.3 + 0.7 * fraud, 0, 1).astype(np.float32)
    warm, trained = np.arange(n) < 200, np.arange(n) >= 400
    decisions = [
        {"event_id": f"t{i}", "stream": "transactions", "entity_id": card[i], "event_time": float(t[i]),
         "decided_at": float(t[i]), "score": float(score[i]), "decision": "approve", "reasons": [],
         "rules_version": "r1", "model_version": "fraud-warming-up-pos3of20-neg0of200" if warm[i] else "fraud-lr9-z9",
         "amount": 10.0, **({"challenger_score": float(shadow[i]), "challenger_version": "gbdt-1-day1"} if trained[i] else {})}
        for i in range(n)]
    labels = [{"event_id": f"t{i}", "stream": "transactions", "label": "chargeback", "is_positive": 1,
               "label_time": float(t[i]) + DAY_S, "entity_id": card[i], "source": "issuer"} for i in np.nonzero(fraud)[0]]
    _store(tmp_path, decisions, labels)
    monkeypatch.setenv("RISKSTREAM_DATA_DIR", str(tmp_path))
    assert main(["evaluate", "--from", "2024-01-01", "--to", "2024-01-03", "--review-budget", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "cold start: 200 decisions" in out
    champion = [line for line in out.splitlines() if line.startswith("  deciding model, after warm-up")][0]
    assert f"{n - 200:,}" in champion and f"{roc_auc(fraud[~warm], score[~warm]):.3f}" in champion
    challenger = [line for line in out.splitlines() if line.startswith("  shadow (the model not deciding)")][0]
    assert f"{average_precision(fraud[trained], shadow[trained]):.3f}" in challenger
    assert average_precision(fraud[trained], shadow[trained]) > average_precision(fraud[trained], score[trained])
    # At a review budget of 5% a day: the top 5% of each day's rows by the shadow's score.
    day = ((t[trained] - JAN1) // DAY_S).astype(int)
    s, y = shadow[trained], fraud[trained]
    flagged = np.concatenate([np.flatnonzero(day == d)[np.argsort(-s[day == d], kind="stable")[:int(0.05 * (day == d).sum())]]
                              for d in np.unique(day)])
    assert f"{y[flagged].mean():.3f} / {y[flagged].sum() / y.sum():.3f}" in challenger

    # The calibration table and the chart.
    png = tmp_path / "models.png"
    assert main(["evaluate", "--from", "2024-01-01", "--to", "2024-01-03", "--review-budget", "0.05",
                 "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("     ") and "given" in line]
    assert rows and all("seen" in line for line in rows)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_with_several_workers_the_cold_start_says_when_a_model_first_decided_and_how_much(tmp_path):
    # Two workers, one model each on its own cards: one proves itself on day 1, the other
    # never within the three days. The cold start is then every day, but a model decided
    # half the traffic from day 1 on.
    from datetime import date

    from riskstream.detectors.evaluate import evaluate
    from riskstream.settings import Settings

    n = 600
    t = JAN1 + np.arange(n) * (3 * DAY_S // n)
    first_worker = np.arange(n) % 2 == 0
    model_decides = first_worker & (t >= JAN1 + DAY_S)
    decisions = [
        {"event_id": f"t{i}", "stream": "transactions", "entity_id": f"c{i % 40}", "event_time": float(t[i]),
         "decided_at": float(t[i]), "score": 0.1, "decision": "approve", "reasons": [], "rules_version": "r1",
         "model_version": "fraud-lr9-z9" if model_decides[i] else "fraud-proving-lr9", "amount": 10.0}
        for i in range(n)]
    _store(tmp_path, decisions, [])
    r = evaluate(Settings(data_dir=tmp_path), date(2024, 1, 1), date(2024, 1, 3))
    cold = r["cold_start"]
    assert cold["days"] == 3 and cold["model_from_day"] == 1
    assert cold["model_share_since"] == pytest.approx(0.5)
    assert cold["several_models_note"].startswith("a model decided from day 1, 50% of the transactions since")
