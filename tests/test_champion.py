"""The fraud model's lifecycle: retrained trees in shadow, the champion and its challenger,
pinning, the proof on settled decisions, and calibration with frauds not reported yet."""

from __future__ import annotations

import numpy as np
import pytest

from riskstream.detectors.fraud import FraudModels
from riskstream.schemas.events import DAY_MS
from tests.test_detectors import NAMES, _fraud_data, _ids


def test_retrained_trees_learn_from_settled_decisions_in_shadow_and_survive_a_checkpoint():
    """The challenger trains on the ring's settled decision-time features once a day of event
    time (in line here, as a replay does), scores beside the online model, and comes back
    from a checkpoint with the same predictions."""
    from riskstream.detectors.retrained import RetrainedTrees

    rng = np.random.default_rng(4)
    X, y = _fraud_data(rng, 12_000, fraud_rate=0.05)
    ids = _ids("r", 12_000)
    t = np.linspace(0, 6 * DAY_MS, 12_000).astype(np.int64)
    models = FraudModels(NAMES, capacity=20_000, seed=1, challenger=RetrainedTrees(min_positives=20, rounds=50))
    shadow = np.full(12_000, np.nan, np.float32)
    for s in range(0, 12_000, 1000):
        scores = models.score(X[s:s + 1000], NAMES)
        if scores.challenger is not None:
            shadow[s:s + 1000] = scores.challenger
        models.remember(ids[s:s + 1000], X[s:s + 1000], t[s:s + 1000], scores=scores.probability)
        frauds = np.flatnonzero(y[s:s + 1000]) + s
        models.learn_from_labels(ids[frauds], np.ones(len(frauds), np.int8), t[frauds] + 3_600_000)
    assert models.challenger.trainings >= 3 and models.challenger.version.startswith("gbdt-")
    scored = ~np.isnan(shadow)
    assert 0 < scored.sum() < len(shadow), "no say before the first model, then on every row"
    from riskstream.detectors.evaluate import roc_auc

    assert roc_auc(y[scored], shadow[scored]) > 0.9
    twin = FraudModels(NAMES, capacity=20_000, challenger=RetrainedTrees())
    twin.restore(models.checkpoint())
    np.testing.assert_allclose(twin.score(X[:500], NAMES).challenger, models.score(X[:500], NAMES).challenger)
    assert twin.challenger.version == models.challenger.version


@pytest.mark.parametrize("margin, promoted", [(0.02, True), (1.0, False)])
def test_the_challenger_decides_once_it_leads_the_online_model_on_settled_decisions(margin, promoted):
    """Fraud here is an interaction (either signal alone, not both) that a linear model cannot
    rank and trees can: compared on the settled decisions of the last week, the trees lead
    and take over (the version says so), unless the margin asked for is out of reach."""
    from riskstream.detectors.retrained import RetrainedTrees

    rng = np.random.default_rng(9)
    n = 16_000
    a, b = rng.random(n) < 0.15, rng.random(n) < 0.15
    y = ((a ^ b) & (rng.random(n) < 0.35)).astype(np.int8)
    X = np.column_stack([a + rng.normal(0, 0.1, n), b + rng.normal(0, 0.1, n),
                         rng.lognormal(3, 0.5, n), rng.random(n)]).astype(np.float32)
    ids, t = _ids("p", n), np.linspace(0, 16 * DAY_MS, n).astype(np.int64)
    models = FraudModels(NAMES, capacity=20_000, seed=2, challenger=RetrainedTrees(min_positives=20, rounds=60),
                         promote_margin=margin)
    for s in range(0, n, 1000):
        scores = models.score(X[s:s + 1000], NAMES)
        models.remember(ids[s:s + 1000], X[s:s + 1000], t[s:s + 1000], scores=scores.probability,
                        challenger_scores=scores.challenger)
        frauds = np.flatnonzero(y[s:s + 1000]) + s
        models.learn_from_labels(ids[frauds], np.ones(len(frauds), np.int8), t[frauds] + 3_600_000)
    assert models.comparisons, "compared at each training once both had scored settled decisions"
    assert models.promoted is promoted
    last = models.score(X[:200], NAMES)
    if promoted:
        assert models.version.startswith("gbdt-")
        np.testing.assert_array_equal(last.probability, last.challenger)
        lead = models.comparisons[-1]
        assert lead["challenger"]["average_precision"] >= lead["champion"]["average_precision"] + margin
    else:
        assert not models.version.startswith("gbdt-")


def _stream(models, X, y, ids, t, batch=1000):
    for s in range(0, len(X), batch):
        scores = models.score(X[s:s + batch], NAMES)
        models.remember(ids[s:s + batch], X[s:s + batch], t[s:s + batch], scores=scores.probability,
                        challenger_scores=scores.challenger, online_scores=scores.online)
        frauds = np.flatnonzero(y[s:s + batch]) + s
        models.learn_from_labels(ids[frauds], np.ones(len(frauds), np.int8), t[frauds] + 3_600_000)


def test_with_calibration_the_online_model_decides_once_calibrated_and_its_probability_is_a_fraud_rate():
    """The online model learns from one legit decision in ten, so its own probability runs
    high; calibrated on settled decisions it scored in shadow, its mean probability is near
    the fraud rate, and until that calibration it has no say (version fraud-proving-...)."""
    rng = np.random.default_rng(11)
    n = 30_000
    X, y = _fraud_data(rng, n, fraud_rate=0.02)
    ids, t = _ids("c", n), np.linspace(0, 10 * DAY_MS, n).astype(np.int64)
    models = FraudModels(NAMES, capacity=40_000, seed=3, calibrate=True)
    seen_proving = False
    for s in range(0, n, 1000):
        _stream(models, X[s:s + 1000], y[s:s + 1000], ids[s:s + 1000], t[s:s + 1000])
        if models.ready and not models.proven:
            seen_proving = True
            assert models.version.startswith("fraud-proving-")
            assert not models.score(X[:100], NAMES).probability.any()
    assert seen_proving and models.proven and "online" in models.calibrations
    fresh_X, fresh_y = _fraud_data(np.random.default_rng(12), 20_000, fraud_rate=0.02)
    scored = models.score(fresh_X, NAMES)
    calibrated, raw = float(scored.probability.mean()), float(scored.online.mean())
    assert 0.5 * fresh_y.mean() < calibrated < 2 * fresh_y.mean(), (calibrated, fresh_y.mean())
    assert raw > 3 * calibrated  # what the thresholds would have seen without it
    twin = FraudModels(NAMES, capacity=40_000, calibrate=True)
    twin.restore(models.checkpoint())
    np.testing.assert_allclose(twin.score(fresh_X[:500], NAMES).probability, scored.probability[:500], rtol=1e-5)


def test_a_pinned_model_decides_until_the_pin_is_released():
    from riskstream.detectors.retrained import RetrainedTrees

    rng = np.random.default_rng(4)
    X, y = _fraud_data(rng, 12_000, fraud_rate=0.05)
    models = FraudModels(NAMES, capacity=20_000, seed=1, challenger=RetrainedTrees(min_positives=20, rounds=30))
    _stream(models, X, y, _ids("q", 12_000), np.linspace(0, 6 * DAY_MS, 12_000).astype(np.int64))
    trained = models.challenger.version
    text = models.challenger.booster.model_to_string()
    assert models.deciding == "online" and not models.version.startswith("gbdt-")
    models.pin(trained)  # the newest trees, by name
    assert models.version == trained
    np.testing.assert_allclose(models.score(X[:300], NAMES).probability, models.challenger.score(X[:300]))
    with pytest.raises(KeyError):
        models.pin("gbdt-99-day1")  # an older version needs its text from the registry
    models.pin("gbdt-1-day0", text)
    assert models.version == "gbdt-1-day0"
    shadow = models.score(X[:300], NAMES)
    assert shadow.shadow_version.startswith("fraud-lr")  # the online model scores in shadow meanwhile
    models.pin("online")
    assert models.deciding == "online"
    models.pin("auto")
    assert models.pinned is None and models.deciding == "online"  # not promoted: no comparison won


def _stream_reported_late(models, X, y, t, ids, delay, per_batch=1000, record=None, on_batch=None):
    """Decisions in batches; each fraud's label comes ``delay`` after it, as the stream reaches
    it. ``record``: the online model's decision-time scores to remember instead of its own;
    ``on_batch(event time)`` after each batch."""
    reported_until = -1
    for s in range(0, len(X), per_batch):
        rows = slice(s, s + per_batch)
        scores = models.score(X[rows], NAMES)
        models.remember(ids[rows], X[rows], t[rows], scores=scores.probability,
                        online_scores=scores.online if record is None else record[rows])
        until = t[min(s + per_batch, len(X)) - 1]
        due = np.flatnonzero((y == 1) & (t + delay > reported_until) & (t + delay <= until))
        models.learn_from_labels(ids[due], np.ones(len(due), np.int8), t[due] + delay[due])
        reported_until = until
        if on_batch is not None:
            on_batch(int(t[s]))


def test_the_online_model_is_proven_on_its_recent_record_reaching_back_for_enough_frauds():
    """Proof judges the scores the model gave in shadow on the settled decisions of the last
    week, or back until they hold 50 settled frauds. Here frauds are reported 6 days late, so a
    week holds about 10: the window reaches back, and once the days it reaches are ones the
    model ranked, it decides; the days of noise before it do not hold it back for long."""
    rng = np.random.default_rng(21)
    per_day, days = 2000, 26
    n = per_day * days
    X, y = _fraud_data(rng, n, fraud_rate=0.005)
    ids, t = _ids("p", n), np.arange(n, dtype=np.int64) * (DAY_MS // per_day)
    # The decision-time scores in shadow: noise for 8 days, then ranking the frauds.
    record = np.where(t >= 8 * DAY_MS, 0.3 * y + 0.7 * rng.random(n), rng.random(n)).astype(np.float32)
    models = FraudModels(NAMES, capacity=60_000, seed=5, calibrate=True, prove_auc=0.8)
    proven_days = []
    _stream_reported_late(models, X, y, t, ids, np.full(n, 6 * DAY_MS), record=record,
                          on_batch=lambda at: proven_days.append(at // DAY_MS) if models.proven else None)
    proven_on_day = proven_days[0] if proven_days else None
    assert proven_on_day is not None and 15 <= proven_on_day <= 22, proven_on_day
    proof = models.proof
    assert proof["roc_auc"] >= 0.8 and proof["frauds"] >= models.JUDGE_FRAUDS
    # The window reached back past the week, and not to the start.
    assert 7.5 < proof["window_days"] < proven_on_day - 2, proof


def test_reporting_times_seen_in_the_first_weeks_count_the_long_ones_not_seen_yet():
    """Frauds at a steady rate from day 0, reported 0-30 days later, the stream now on day 20:
    only frauds of the first 10 days can have shown a 10-day delay, so plainly counted, three
    quarters of the delays seen are under 10 days. Weighted by how long each delay could have
    been seen, the share is the truth as far as 20 days of reports tell it: half."""
    rng = np.random.default_rng(41)
    n = 40_000
    X, y = _fraud_data(rng, n, fraud_rate=0.03)
    t = np.linspace(0, 20 * DAY_MS, n).astype(np.int64)
    delay = (rng.uniform(0, 30, n) * DAY_MS).astype(np.int64)
    models = FraudModels(NAMES, capacity=60_000, seed=3)
    _stream_reported_late(models, X, y, t, _ids("w", n), delay)
    ten_days = np.array([10 * DAY_MS])
    weighted = float(models.reported_share(ten_days, models._clock())[0])
    plain = float(models.reported_share(ten_days)[0])
    assert 0.42 < weighted < 0.58 and plain > 0.68, (weighted, plain)


def test_calibration_counts_the_frauds_not_reported_yet():
    """Frauds reported half a day to 6 days late: the judging window's "legit" decisions hold
    frauds not reported yet. Fitted with the share reported by each age (from the reporting
    times seen), the calibrated probability stays near the fraud rate; counting every
    unreported decision as legit, it falls well below it."""
    rng = np.random.default_rng(31)
    n = 60_000
    X, y = _fraud_data(rng, n, fraud_rate=0.02)
    t = np.linspace(0, 30 * DAY_MS, n).astype(np.int64)
    delay = (rng.uniform(0.5, 6, n) * DAY_MS).astype(np.int64)
    fresh_X, fresh_y = _fraud_data(np.random.default_rng(32), 20_000, fraud_rate=0.02)
    means = {}
    for corrected in (True, False):
        models = FraudModels(NAMES, capacity=80_000, seed=3, calibrate=True)
        if not corrected:
            models.reported_share = lambda age, now=None: np.ones(len(age))
        _stream_reported_late(models, X, y, t, _ids("r", n), delay)
        assert models.proven
        means[corrected] = float(models.score(fresh_X, NAMES).probability.mean())
    rate = fresh_y.mean()
    assert 0.7 * rate < means[True] < 1.4 * rate, (means, rate)
    assert means[False] < 0.65 * means[True], (means, rate)
