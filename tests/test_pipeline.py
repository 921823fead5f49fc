"""Decisions from features, rules and scores: precedence, reasons, alerts, limits, encoding."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from riskstream.detectors.features import FEATURE_NAMES, FeatureEngine
from riskstream.rules.compiler import RuleSetHolder
from riskstream.schemas.transactions import TRANSACTION_OPTIONAL, TransactionBatch
from riskstream.streams.pipeline import DecisionPolicy, TransactionScorer, encode_outputs

NOW = 1_763_800_000_000

RULES = """
version: "t-1"
lists:
  deny_countries: [KP]
  trusted: [card-trusted]
rules:
  - id: deny_country
    version: 1
    description: deny
    action: decline
    reason: {code: DENY_COUNTRY, text: "from {country}"}
    when: country in deny_countries
  - id: trusted
    version: 1
    description: allow list
    action: allow
    reason: {code: TRUSTED, text: "trusted card"}
    when: card_id in trusted
  - id: big
    version: 1
    description: review big amounts
    action: review
    reason: {code: BIG, text: "amount {amount:.0f}"}
    when: amount > 1000
  - id: medium
    version: 1
    description: step up medium amounts
    action: step_up
    reason: {code: MEDIUM, text: "amount {amount:.0f}"}
    when: amount > 500 and amount <= 1000
  - id: shadow_small
    version: 1
    description: shadow
    action: decline
    mode: shadow
    reason: {code: SMALL, text: "small"}
    when: amount < 2
  - id: cut
    version: 1
    description: cut the limit
    action: cut_limit
    params: {limit: 50, hours: 2}
    reason: {code: CUT, text: "cut"}
    when: amount > 5000
"""


@pytest.fixture
def scorer():
    holder = RuleSetHolder(available_columns=[*FEATURE_NAMES, "score", "card_id", "merchant_id", *TRANSACTION_OPTIONAL])
    holder.load(RULES, "test.yaml")
    return TransactionScorer(FeatureEngine(), holder, models=None)


def _batch(rows: list[dict]) -> TransactionBatch:
    cols = {k: [r.get(k, d) for r in rows] for k, d in
            (("transaction_id", ""), ("event_time", NOW), ("card_id", "c"), ("merchant_id", "m"),
             ("amount", 10.0), ("country", "NL"))}
    return TransactionBatch.from_columns(cols)


def test_rule_precedence_and_reasons(scorer):
    out = scorer.process(_batch([
        {"transaction_id": "deny", "country": "KP", "amount": 2000.0},
        {"transaction_id": "trusted-big", "card_id": "card-trusted", "amount": 2000.0},
        {"transaction_id": "trusted-denied", "card_id": "card-trusted", "country": "KP"},
        {"transaction_id": "big", "amount": 2000.0},
        {"transaction_id": "medium", "amount": 700.0},
        {"transaction_id": "small", "amount": 1.0},
        {"transaction_id": "plain", "amount": 10.0},
    ]), now_ms=NOW)
    decisions = dict(zip(out.batch.transaction_id, out.decision))
    assert decisions == {"deny": "decline", "trusted-big": "approve", "trusted-denied": "decline",
                         "big": "review", "medium": "step_up", "small": "approve", "plain": "approve"}
    reasons = dict(zip(out.batch.transaction_id, out.reasons))
    assert "DENY_COUNTRY: from KP" in reasons["deny"]
    assert list(reasons["small"]) == ["shadow:SMALL: small"]  # recorded, never acted on
    assert list(reasons["plain"]) == []
    assert out.rules_version.startswith("t-1#")


def test_score_thresholds_apply_without_rules(scorer):
    policy = DecisionPolicy()
    batch = _batch([{"transaction_id": f"t{i}"} for i in range(4)])
    feats = scorer.features.compute(batch)
    score = np.array([0.1, policy.step_up_score, policy.review_score, policy.decline_score], dtype=np.float32)
    columns = {**feats, "score": score, "card_id": batch.card_id, "merchant_id": batch.merchant_id, **batch.optional}
    outcome = scorer.rules.current.evaluate(columns)
    decision, reasons, limits = scorer.decide(batch, score, outcome, scorer.rules.current, None, columns, NOW)
    assert decision.tolist() == ["approve", "step_up", "review", "decline"]
    assert reasons[3][0].startswith("MODEL_SCORE: fraud probability 0.90")
    assert limits == []  # 0.90 < block_score


def test_limit_controls_block_later_transactions(scorer):
    out = scorer.process(_batch([{"transaction_id": "huge", "card_id": "c9", "amount": 6000.0}]), now_ms=NOW)
    assert [(lim["action"], lim["max_amount"]) for lim in out.limits] == [("cut_limit", 50.0)]
    assert out.limits[0]["valid_until"] == pytest.approx((NOW + 2 * 3_600_000) / 1000)
    later = scorer.process(_batch([
        {"transaction_id": "over", "card_id": "c9", "amount": 80.0, "event_time": NOW + 60_000},
        {"transaction_id": "under", "card_id": "c9", "amount": 20.0, "event_time": NOW + 60_000},
        {"transaction_id": "expired", "card_id": "c9", "amount": 80.0, "event_time": NOW + 3 * 3_600_000},
    ]), now_ms=NOW)
    assert dict(zip(later.batch.transaction_id, later.decision)) == {
        "over": "decline", "under": "approve", "expired": "approve"}
    assert later.reasons[0][0].startswith("LIMIT_BLOCK")


def test_alert_severity_is_likelihood_times_impact(scorer):
    out = scorer.process(_batch([{"transaction_id": "deny", "country": "KP", "amount": 2000.0}]), now_ms=NOW)
    (alert,) = out.alerts
    # A hard-rule decline counts as near-certain (0.9) even with no model score.
    assert alert["severity"] == pytest.approx(0.9 * 2000.0)
    assert alert["severity_level"] == "critical" and alert["kind"] == "fraud_decline"


def test_encoded_outputs_are_one_decision_per_transaction(scorer):
    out = scorer.process(_batch([{"transaction_id": f"t{i}", "card_id": f"c{i % 3}"} for i in range(10)]), now_ms=NOW)
    enc = encode_outputs(out)
    assert [orjson.loads(v)["event_id"] for _, v in enc.decisions] == [f"t{i}" for i in range(10)]
    assert [k for k, _ in enc.decisions] == [f"c{i % 3}".encode() for i in range(10)]
    row = orjson.loads(enc.decisions[0][1])
    assert set(row) == {"event_id", "stream", "entity_id", "event_time", "decided_at", "score", "decision",
                        "reasons", "rules_version", "model_version", "amount"}
    assert row["event_time"] == NOW / 1000 and 0.0 <= row["score"] <= 1.0
    assert enc.sink_arrow["transactions"] and enc.sink_arrow["decisions"]
    import pyarrow as pa

    table = pa.ipc.open_stream(enc.sink_arrow["decisions"][0]).read_all()
    assert table.column("event_id").to_pylist() == [f"t{i}" for i in range(10)]
    assert table.column("reasons").to_pylist() == [list(r) for r in out.reasons]
    assert encode_outputs(out, topics=False).decisions == []


def test_block_list_declines_only_controlled_cards_while_valid():
    from riskstream.streams.pipeline import BlockList

    now = 1_763_800_000_000
    blocks = BlockList()
    blocks.apply({"entity_id": "c1", "valid_until": (now + 60_000) / 1000, "max_amount": 0.0})
    blocks.apply({"entity_id": "c2", "valid_until": (now + 60_000) / 1000, "max_amount": 100.0})
    batch = TransactionBatch.from_columns({
        "transaction_id": ["a", "b", "c", "d", "e"], "event_time": [now, now + 120_000, now, now, now],
        "card_id": ["c1", "c1", "c2", "c2", "c3"], "merchant_id": ["m"] * 5,
        "amount": [5.0, 5.0, 50.0, 150.0, 1e6],
    })
    # c1 blocked until +60s; c2 limited to 100; c3 free.
    assert blocks.violations(batch).tolist() == [True, False, False, True, False]


def test_vectorised_model_reasons_match_the_per_row_ones():
    from riskstream.detectors.fraud import FraudModels
    from riskstream.streams.pipeline import model_reasons

    rng = np.random.default_rng(3)
    X = rng.normal(size=(400, len(FEATURE_NAMES))).astype(np.float32)
    models = FraudModels(learn_every=1)  # a model that learned from these 400 decisions at once
    models.score(X, FEATURE_NAMES)
    y = (X[:, 0] + X[:, 3] > 1.5).astype(np.int8)
    ids = np.asarray([f"e{i}" for i in range(400)], dtype=object)
    models.remember(ids, X, np.full(400, NOW, dtype=np.int64))
    models.learn_from_labels(ids[y == 1], np.ones(int(y.sum()), dtype=np.int8), np.full(int(y.sum()), NOW))
    scored = models.score(X, FEATURE_NAMES)
    score = np.asarray(scored.probability, dtype=np.float32)
    rows = np.arange(0, 400, 7)
    got = model_reasons(scored, score, rows)
    for i in rows.tolist():
        per_row = scored.top_contributions(i, k=3)
        expected = f"MODEL_SCORE: fraud probability {score[i]:.2f}" + (" (" + "; ".join(per_row) + ")" if per_row else "")
        assert got[i] == expected
    assert any("pushed" in t for t in got.values())


def test_arrow_blocks_stay_under_the_message_limit():
    """Long reasons must not make a block the producer refuses (it would fail on every retry)."""
    import pyarrow as pa

    from riskstream.sinks.clickhouse import MAX_BLOCK_BYTES
    from riskstream.streams.pipeline import ScoredBatch, decision_arrow_blocks

    n = 4000
    batch = _batch([{"transaction_id": f"t{i}", "card_id": f"c{i}"} for i in range(n)])
    long_reasons = [[f"MODEL_SCORE: fraud probability 0.99 ({'x' * 300})", "CARD_TESTING: " + "y" * 200]] * n
    scored = ScoredBatch(batch, np.full(n, 0.99, dtype=np.float32), np.full(n, "decline", dtype=object),
                         long_reasons, "r", "m", decided_at_ms=NOW)
    blocks = decision_arrow_blocks(scored)
    assert len(blocks) > 1 and all(len(b) <= MAX_BLOCK_BYTES for b in blocks)
    rows = sum(pa.ipc.open_stream(b).read_all().num_rows for b in blocks)
    assert rows == n


def test_a_decision_carries_the_model_version_that_scored_it():
    """Remembering a batch can settle enough outcomes to change the model (here it warms up):
    the batch's decisions still name the version that scored them, not the one after."""
    from riskstream.detectors.fraud import FraudModels

    holder = RuleSetHolder(available_columns=[*FEATURE_NAMES, "score", "card_id", "merchant_id", *TRANSACTION_OPTIONAL])
    holder.load(RULES, "test.yaml")
    models = FraudModels(learn_every=1, min_positives=20, min_negatives=200)
    scorer = TransactionScorer(FeatureEngine(), holder, models=models)
    rng = np.random.default_rng(5)

    def batch(prefix: str, at_ms: int) -> TransactionBatch:
        return _batch([{"transaction_id": f"{prefix}{i}", "event_time": at_ms + i, "card_id": f"c{i % 50}",
                        "amount": float(rng.lognormal(3, 1))} for i in range(2500)])

    first = scorer.process(batch("a", NOW), now_ms=NOW)
    frauds = np.array([f"a{i}" for i in range(0, 2500, 80)], dtype=object)
    models.learn_from_labels(frauds, np.ones(len(frauds), np.int8), np.full(len(frauds), NOW + 1000))
    before = models.version
    # The first batch matures (more than the 2,048 decisions maturity waits for) as this one is remembered.
    second = scorer.process(batch("b", NOW + 2 * 86_400_000), now_ms=NOW)
    assert before.startswith("fraud-warming-up") and not models.version.startswith("fraud-warming-up")
    assert first.model_version.startswith("fraud-warming-up")
    assert second.model_version == before and not second.score.any()  # scored while warming up
