"""The driver without a broker: labels reach the learners in event time."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from pydantic import SecretStr

from riskstream.settings import Settings
from riskstream.streams.driver import Driver

DAY = 86_400_000
T0 = 1_763_000_000_000


def _tx(i: int, t: int, card: str = "c1") -> bytes:
    return orjson.dumps({"transaction_id": f"t{i}", "event_time": t, "card_id": card,
                         "merchant_id": "m1", "terminal_id": "term1", "amount": 20.0 + i})


def _label(i: int, label_time: int, event_time: int) -> dict:
    return {"event_id": f"t{i}", "stream": "transactions", "label": "chargeback", "is_positive": 1,
            "label_time": label_time, "entity_id": "c1", "source": "test", "merchant_id": "m1",
            "terminal_id": "term1", "event_time": event_time}


def test_a_label_read_before_its_transaction_is_learned_once_event_time_reaches_it(tmp_path):
    engine = Driver(Settings(data_dir=tmp_path, pan_key=SecretStr("k" * 32)))
    models = engine.transactions.models
    # The label arrives first (a replay reads the small labels topic ahead of the transactions).
    assert engine.learn([_label(0, label_time=T0 + 2 * DAY, event_time=T0)]) == 0
    assert len(engine.clock) == 1
    engine.process("transactions", [_tx(0, T0)], now_ms=T0 + 10 * DAY)  # decided, label not due yet
    assert len(engine.clock) == 1 and models.stats["labels_applied"] == 0
    engine.process("transactions", [_tx(1, T0 + DAY)], now_ms=T0 + 10 * DAY)
    assert len(engine.clock) == 1  # event time is now T0+1d < label time T0+2d
    engine.process("transactions", [_tx(2, T0 + 3 * DAY)], now_ms=T0 + 10 * DAY)
    assert len(engine.clock) == 0
    assert models.stats["labels_applied"] == 1 and models.stats["labels_missed"] == 0


def test_label_features_count_for_card_merchant_and_terminal(tmp_path):
    engine = Driver(Settings(data_dir=tmp_path, pan_key=SecretStr("k" * 32)))
    engine.process("transactions", [_tx(i, T0 + i * 60_000) for i in range(5)], now_ms=T0 + 10 * DAY)
    engine.learn([_label(0, label_time=T0 + DAY, event_time=T0)])
    before = engine.process("transactions", [_tx(10, T0 + DAY // 2, card="c2")], now_ms=T0 + 10 * DAY)
    after = engine.process("transactions", [_tx(11, T0 + 2 * DAY, card="c3")], now_ms=T0 + 10 * DAY)
    # A new card at the same merchant and terminal: only the merchant/terminal history differs.
    for name in ("merchant_fraud_rate_7d", "terminal_fraud_rate_7d"):
        assert after.scored.features[name][0] > 10 * before.scored.features[name][0], name
    np.testing.assert_array_equal(before.scored.features["card_fraud_rate_30d"],
                                  after.scored.features["card_fraud_rate_30d"])


def test_a_label_sent_twice_counts_once_in_features_and_models_even_after_a_restore(tmp_path):
    def run(repeat: bool, restore: bool):
        engine = Driver(Settings(data_dir=tmp_path, pan_key=SecretStr("k" * 32)))
        engine.process("transactions", [_tx(i, T0 + i * 60_000) for i in range(5)], now_ms=T0 + 10 * DAY)
        engine.learn([_label(0, label_time=T0 + DAY, event_time=T0)])
        if repeat:
            engine.learn([_label(0, label_time=T0 + DAY, event_time=T0)])  # the same chargeback re-sent
        if restore:  # a restarted worker reads it again after restoring its checkpoint
            state = engine.checkpoint()
            engine = Driver(Settings(data_dir=tmp_path, pan_key=SecretStr("k" * 32)))
            engine.restore(state)
            engine.process("transactions", [_tx(i, T0 + i * 60_000) for i in range(5)], now_ms=T0 + 10 * DAY)
            engine.learn([_label(0, label_time=T0 + DAY, event_time=T0)])
        out = engine.process("transactions", [_tx(11, T0 + 2 * DAY, card="c3")], now_ms=T0 + 10 * DAY)
        return out.scored.features["merchant_fraud_rate_7d"][0], engine

    once, _ = run(repeat=False, restore=False)
    twice, engine = run(repeat=True, restore=False)
    assert once > 0 and twice == once
    assert engine.seen_labels.repeats == 1
    assert engine.transactions.models.stats["labels_applied"] == 1
    _, restored = run(repeat=False, restore=True)
    assert restored.seen_labels.repeats == 1


def test_assigned_partitions_hold_the_watermark_until_they_deliver(tmp_path):
    engine = Driver(Settings(data_dir=tmp_path, pan_key=SecretStr("k" * 32)))
    engine.assign_partitions({0, 1})
    engine.learn([_label(0, label_time=T0 + DAY, event_time=T0)])
    # Partition 0 races ahead; partition 1 (where the labelled payment is) has not delivered.
    engine.process("transactions", [_tx(5, T0 + 5 * DAY, card="c9")], partitions=[0], offsets=[0], now_ms=T0 + 10 * DAY)
    assert engine.newest_event_ms == 0 and len(engine.clock) == 1
    engine.process("transactions", [_tx(0, T0)], partitions=[1], offsets=[0], now_ms=T0 + 10 * DAY)
    assert engine.newest_event_ms == T0 and len(engine.clock) == 1
    engine.process("transactions", [_tx(1, T0 + 2 * DAY)], partitions=[1], offsets=[1], now_ms=T0 + 10 * DAY)
    assert engine.newest_event_ms == T0 + 2 * DAY and len(engine.clock) == 0
    assert engine.transactions.models.stats["labels_missed"] == 0
    engine.forget_partitions({1})
    engine.process("transactions", [_tx(6, T0 + 6 * DAY, card="c9")], partitions=[0], offsets=[1], now_ms=T0 + 10 * DAY)
    assert engine.newest_event_ms == T0 + 6 * DAY


def test_score_thresholds_come_from_settings_and_must_rise(tmp_path):
    import pytest

    from riskstream.settings import ConfigError

    engine = Driver(Settings(data_dir=tmp_path, pan_key=SecretStr("k" * 32), step_up_score=0.5,
                             review_score=0.7, decline_score=0.95))
    policy = engine.transactions.scorer.policy
    assert (policy.step_up_score, policy.review_score, policy.decline_score) == (0.5, 0.7, 0.95)
    with pytest.raises(ConfigError, match="must rise"):
        Driver(Settings(data_dir=tmp_path, pan_key=SecretStr("k" * 32), review_score=0.2))


def test_a_short_batch_waits_the_linger_and_a_full_or_unlingered_one_does_not(tmp_path):
    from riskstream.streams.driver import batch_linger_s

    settings = Settings(data_dir=tmp_path, batch_max_events=100, batch_linger_ms=5)
    assert batch_linger_s(1, settings) == batch_linger_s(99, settings) == 0.005
    assert batch_linger_s(100, settings) == batch_linger_s(250, settings) == 0.0
    assert batch_linger_s(1, settings.model_copy(update={"batch_linger_ms": 0})) == 0.0


def test_the_fraud_model_waits_as_long_as_the_slowest_label_source(tmp_path):
    from pydantic import SecretStr

    from riskstream.settings import ConfigError

    settings = Settings(data_dir=tmp_path, pan_key=SecretStr("k" * 32),
                        label_delays={"transactions": {"chargeback": "7d", "analyst": "36h"}})
    assert Driver(settings).transactions.models.maturity_ms == 7 * 86_400_000
    assert Driver(Settings(data_dir=tmp_path, pan_key=SecretStr("k" * 32))).transactions.models.maturity_ms == 86_400_000
    with pytest.raises(ConfigError, match="label_delays\\['transactions'\\].*'a week'"):
        Driver(settings.model_copy(update={"label_delays": {"transactions": {"chargeback": "a week"}}}))
