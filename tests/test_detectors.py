"""The detector contract over every registered detector, and FraudModels' label semantics."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pandas as pd
import pytest

from riskstream.detectors.base import DetectorError, check_detector, detector_factories, named_factories
from riskstream.detectors.evaluate import roc_auc
from riskstream.detectors.fraud import FraudModels
from riskstream.detectors.fraud_detectors import (
    LinearFraudDetector, RobustZAnomalyDetector, hash_ids, quartiles, signed_log1p,
)
from riskstream.schemas.events import DAY_MS

DETECTORS = detector_factories()
NAMES = ("amount", "card_txn_count_1h", "terminal_fraud_rate_7d", "card_amount_ratio_30d")


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_every_registered_detector_meets_the_contract(name):
    check_detector(DETECTORS[name])


def test_registry_has_the_fraud_detectors():
    assert {"fraud_linear", "fraud_robust_z", "fraud_models"} <= set(DETECTORS)


def test_registering_a_name_twice_fails_loudly():
    with pytest.raises(DetectorError, match="listed twice"):
        named_factories([("fraud_linear", lambda: LinearFraudDetector(NAMES))] * 2)


def test_check_suite_catches_a_broken_detector():
    class Constant(RobustZAnomalyDetector):
        name = "constant"

        def score_many(self, X):
            self.check_matrix(X)
            return np.full(len(X), 0.5, dtype=np.float32)

    with pytest.raises(AssertionError, match="outlier ROC AUC"):
        check_detector(lambda: Constant(NAMES))


def _fraud_data(rng, n, fraud_rate=0.05):
    """Fraud has larger amounts and velocity; terminal risk is noise."""
    y = (rng.random(n) < fraud_rate).astype(np.int8)
    X = np.column_stack([
        rng.lognormal(3 + 1.5 * y, 0.6),
        rng.poisson(1 + 4 * y),
        rng.random(n) * 0.01,
        rng.lognormal(0 + 1.0 * y, 0.3),
    ]).astype(np.float32)
    return X, y


def test_numpy_scoring_matches_river_predict_proba_many():
    rng = np.random.default_rng(0)
    X, y = _fraud_data(rng, 6000)
    det = LinearFraudDetector(NAMES, negative_keep_rate=0.2)
    det.learn_many(X, y)
    np.testing.assert_allclose(det.score_many(X[:500]), det.river_proba_many(X[:500]), rtol=1e-4, atol=1e-6)


def _ids(prefix, n):
    return np.array([f"{prefix}{i}" for i in range(n)], dtype=object)


def test_learns_only_from_features_remembered_at_decision_time():
    rng = np.random.default_rng(1)
    X_decision, y = _fraud_data(rng, 3000, fraud_rate=0.3)
    models = FraudModels(NAMES, capacity=10_000, seed=5, learn_every=1)  # learns at every call
    ids = _ids("t", 3000)
    models.remember(ids, X_decision, np.arange(3000))
    # By label time the card's features have moved on; the worker scores new data in between.
    models.score(X_decision * 50 + 7, NAMES)
    learned = models.learn_from_labels(ids, y, np.full(3000, 10_000))
    assert learned == 3000
    reference = LinearFraudDetector(NAMES, seed=5, scale_from_traffic=True)
    reference.observe_many(X_decision)  # FraudModels scales by the traffic it remembers
    reference.learn_many(X_decision, y)
    np.testing.assert_array_equal(models.linear.weight_, reference.weight_)
    np.testing.assert_array_equal(models.linear.mean_, reference.mean_)
    assert models.stats["labels_applied"] == 3000


def test_unknown_and_duplicate_labels_are_counted_not_learned():
    models = FraudModels(NAMES, capacity=100)
    X = np.ones((3, 4), np.float32)
    models.remember(_ids("t", 3), X, np.array([0, 1, 2]))
    assert models.learn_from_labels(np.array(["t0", "ghost", "t0"]), np.array([1, 1, 1]), np.zeros(3)) == 1
    assert models.stats["labels_missed"] == 1
    assert models.learn_from_labels(np.array(["t0"]), np.array([1]), np.zeros(1)) == 0
    assert models.stats["duplicate_labels"] == 1


def test_maturity_turns_unlabelled_decisions_into_negatives():
    models = FraudModels(NAMES, capacity=1000, maturity_ms=7 * DAY_MS, negative_keep_rate=1.0, learn_every=1)
    X = np.ones((10, 4), np.float32)
    models.remember(_ids("old", 10), X, np.full(10, 0))
    models.learn_from_labels(np.array(["old3"]), np.array([1]), np.array([DAY_MS]))
    assert models.stats["matured_negatives"] == 0  # nothing is 7 days old yet
    models.remember(_ids("new", 10), X, np.full(10, 8 * DAY_MS))
    assert models.stats["matured_negatives"] == 0  # remember() waits for a worthwhile batch
    models.learn_from_labels(np.array([], dtype=object), np.array([], np.int8), np.array([], np.int64))
    # Nine old decisions without a positive label matured; the positive and the new ones did not.
    assert models.stats["matured_negatives"] == 9
    assert models.linear.n_learned == 1 + 9
    # A chargeback after maturity corrects the negative.
    assert models.learn_from_labels(np.array(["old4"]), np.array([1]), np.array([9 * DAY_MS])) == 1
    settled = models.settled()
    y = settled["label"][settled["event_time"] >= 0]
    assert y.sum() == 2 and len(y) == 10


def _stream_in_batches(models, X, y, times, batch, label_every=5000, restore_at=None):
    """Remember ``X`` in batches of ``batch``; every ``label_every`` decisions, the labels of
    the frauds among the decisions before. ``restore_at``: continue from a checkpoint there."""
    ids = _ids("t", len(X))
    for start in range(0, len(X), batch):
        if start and start % label_every == 0:
            fraud = np.flatnonzero(y[:start] == 1)
            models.learn_from_labels(ids[fraud], np.ones(len(fraud), np.int8), np.full(len(fraud), times[start]))
        if start == restore_at:
            twin = FraudModels()
            twin.restore(models.checkpoint())
            models = twin
        models.remember(ids[start:start + batch], X[start:start + batch], times[start:start + batch])
    return models


def test_what_the_model_learns_does_not_depend_on_the_batching():
    """A worker's batches are a few dozen transactions at low rates and thousands when it
    catches up: the model must come out the same (learning per batch made small batches
    push scores up, and a worker at low rates decline far more)."""
    rng = np.random.default_rng(8)
    n = 20_000
    X, y = _fraud_data(rng, n, fraud_rate=0.05)
    times = np.arange(n, dtype=np.int64) * 10_000  # 8,640 a day: learn_every comes before a day

    def weights(batch, **kw):
        models = FraudModels(NAMES, capacity=n, seed=3, min_positives=5, min_negatives=50, **kw)
        models = _stream_in_batches(models, X, y, times, batch)
        assert models.stats["settled_positives"] > 0 and models.stats["matured_negatives"] > 10_000
        return models.linear.weight_.copy(), models.linear.n_learned

    big, learned = weights(5000)
    assert learned > 0
    for batch in (100, 1000):
        np.testing.assert_array_equal(weights(batch)[0], big)
    # The queue of settled rows survives a checkpoint taken between two updates.
    models = FraudModels(NAMES, capacity=n, seed=3, min_positives=5, min_negatives=50)
    restored = _stream_in_batches(models, X, y, times, 100, restore_at=7300)
    np.testing.assert_array_equal(restored.linear.weight_, big)
    # What the old schedule (learning at every call) did: the batching shows in the model.
    assert not np.array_equal(weights(100, learn_every=1)[0], weights(5000, learn_every=1)[0])


def test_a_trickle_of_traffic_still_learns_every_day():
    rng = np.random.default_rng(2)
    X, y = _fraud_data(rng, 300, fraud_rate=0.2)
    times = np.arange(300, dtype=np.int64) * (DAY_MS // 50)  # 50 decisions a day, six days
    models = FraudModels(NAMES, capacity=1000, min_positives=1, min_negatives=1)
    ids = _ids("t", 300)
    for start in range(0, 300, 10):
        if start >= 20:
            fraud = np.flatnonzero(y[:start - 10] == 1)
            models.learn_from_labels(ids[fraud], np.ones(len(fraud), np.int8), np.full(len(fraud), times[start]))
        models.remember(ids[start:start + 10], X[start:start + 10], times[start:start + 10])
    # 300 decisions, far fewer than learn_every: learned at least once a day of event time.
    assert models.learn_every > 300
    assert models.linear.n_learned > 0
    assert models.queued_rows < 100  # at most a day of outcomes waits


@pytest.mark.parametrize("legacy", [False, True])
def test_a_late_chargeback_takes_its_negative_out_of_quality(legacy):
    """The corrected negative leaves the quality windows, found by its recorded position (or,
    from a checkpoint written before positions were kept, by its id); other entries stay."""
    models = FraudModels(NAMES, capacity=1000, maturity_ms=DAY_MS, quality_capacity=50,
                         min_positives=0, min_negatives=0)
    rng = np.random.default_rng(4)
    X = rng.random((120, 4)).astype(np.float32)
    models.remember(_ids("t", 120), X, np.zeros(120, np.int64), scores=np.full(120, 0.1, np.float32))
    models.remember(_ids("later", 1), X[:1], np.array([2 * DAY_MS]))
    models.learn_matured()  # 120 negatives; the quality ring (50) holds the last 50: t70..t119
    if legacy:
        state = pickle.loads(models.checkpoint())
        del state["arrays"]["_q_at"]
        models = FraudModels()
        models.restore(pickle.dumps(state))
    live_before = int((models.settled()["event_time"] >= 0).sum())
    assert models.learn_from_labels(np.array(["t100", "t3"]), np.ones(2, np.int8), np.full(2, 3 * DAY_MS)) == 2
    settled = models.settled()
    dropped = (settled["event_time"] < 0) & (settled["label"] == 0)
    # t100's negative is out; t3's had already left the ring; the two positives went in.
    assert list(settled["key"][dropped]) == list(hash_ids(np.array(["t100"])))
    assert int((settled["event_time"] >= 0).sum()) == live_before - 1 - 2 + 2


def test_ring_eviction_counts_unsettled_and_forgets_ids():
    models = FraudModels(NAMES, capacity=8)
    X = np.ones((5, 4), np.float32)
    models.remember(_ids("a", 5), X, np.arange(5))
    models.remember(_ids("b", 5), X, np.arange(5, 10))
    assert models.stats["evicted_unsettled"] == 2
    assert models.learn_from_labels(np.array(["a0", "a4", "b4"]), np.array([1, 1, 1]), np.full(3, 20)) == 2
    assert models.stats["labels_missed"] == 1
    assert models.id_index_load[0] == 10  # the evicted ids went stale, not deleted (labels checked above)


def test_columns_are_matched_by_name():
    rng = np.random.default_rng(2)
    X, y = _fraud_data(rng, 4000)
    models = FraudModels(NAMES, capacity=5000)
    models.remember(_ids("t", 4000), X, np.arange(4000))
    models.learn_from_labels(_ids("t", 4000), y, np.full(4000, 5000))
    perm = [2, 0, 3, 1]
    a = models.score(X[:50], NAMES)
    b = models.score(X[:50][:, perm], [NAMES[i] for i in perm])
    np.testing.assert_array_equal(a.probability, b.probability)
    with pytest.raises(DetectorError, match="missing"):
        models.score(X[:5, :3], NAMES[:3])


def _trained_models(seed=3, n=8000):
    rng = np.random.default_rng(seed)
    X, y = _fraud_data(rng, n)
    models = FraudModels(NAMES, capacity=20_000, negative_keep_rate=0.5, seed=seed, maturity_ms=7 * DAY_MS)
    t = np.linspace(0, 20 * DAY_MS, n).astype(np.int64)
    ids = _ids("t", n)
    models.ready_from_ms = None  # event time of the first batch decided with a ready model
    for s in range(0, n, 1000):
        if models.ready and models.ready_from_ms is None:
            models.ready_from_ms = int(t[s])
        models.remember(ids[s:s + 1000], X[s:s + 1000], t[s:s + 1000], entity_ids=ids[s:s + 1000])
        pos = np.nonzero(y[s:s + 1000])[0] + s
        models.learn_from_labels(ids[pos], y[pos], t[pos] + DAY_MS)
    return models, X, y


def test_contributions_explain_the_logit_and_point_the_right_way():
    models, X, y = _trained_models()
    scores = models.score(X[:200], NAMES)
    logit = np.log(scores.probability / (1 - scores.probability))
    np.testing.assert_allclose(scores.contributions.sum(axis=1) + models.linear.offset_, logit, atol=2e-3)
    # Larger amounts are fraud here: the amount weight is positive, and a huge amount pushes up.
    assert models.linear.weight_[0] > 0
    big = X[:1].copy()
    big[0, 0] = 1e6
    s = models.score(big, NAMES)
    assert s.contributions[0, 0] > 0
    reasons = s.top_contributions(0, k=3)
    assert reasons[0].startswith("amount=1e+06 pushed +")
    pushes = [float(r.rsplit("pushed ", 1)[1]) for r in reasons]
    assert pushes == sorted(pushes, reverse=True) and all(p > 0 for p in pushes)
    top = scores.top_indices(3)
    assert top.shape == (200, 3)
    assert np.all(np.take_along_axis(scores.contributions, top, 1)[:, 0] == scores.contributions.max(axis=1))
    assert models.score(X[:200], NAMES).anomaly.dtype == np.float32


def test_fraud_models_checkpoint_round_trip_continues_identically():
    models, X, y = _trained_models()
    twin = FraudModels()
    twin.restore(models.checkpoint())
    assert twin.version == models.version
    np.testing.assert_array_equal(twin.score(X[:300], NAMES).probability, models.score(X[:300], NAMES).probability)
    np.testing.assert_array_equal(twin.score(X[:300], NAMES).anomaly, models.score(X[:300], NAMES).anomaly)
    # Both learn the same from the same later labels (remembered features and RNG survived).
    for m in (models, twin):
        m.remember(_ids("later", 100), X[:100], np.full(100, 20 * DAY_MS))
        m.learn_from_labels(_ids("later", 100)[:5], np.ones(5, np.int8), np.full(5, 20 * DAY_MS))
    assert twin.version == models.version
    np.testing.assert_array_equal(twin.linear.weight_, models.linear.weight_)
    assert twin.stats == models.stats
    # The checkpoint holds the decisions written, not the preallocated ring: a worker's stop
    # writes it within its time budget.
    preallocated = sum(getattr(models, k).nbytes for k in models._RING_ARRAYS + models._QUALITY_ARRAYS)
    assert models._ring_written() == 8100 and len(models.checkpoint()) < preallocated / 10


def test_a_wrapped_ring_checkpoints_whole_and_restores_identically():
    models = FraudModels(NAMES, capacity=3000)
    X = np.random.default_rng(3).normal(size=(4000, len(NAMES))).astype(np.float32)
    ids = _ids("w", 4000)
    for start in range(0, 4000, 1000):
        models.remember(ids[start:start + 1000], X[start:start + 1000], np.full(1000, DAY_MS + start, np.int64))
    assert models._ring_written() == 3000
    twin = FraudModels(NAMES, capacity=3000)
    twin.restore(models.checkpoint())
    np.testing.assert_array_equal(twin._X, models._X)
    np.testing.assert_array_equal(twin._time, models._time)


def test_quality_rows_for_the_model_quality_table():
    models, X, y = _trained_models()
    rows = models.quality(measured_at=123.0)
    assert {r["metric"] for r in rows} == {"roc_auc", "average_precision", "card_precision_at_100"}
    assert {r["window"] for r in rows} == {"7d", "28d"}
    for r in rows:
        assert set(r) == {"measured_at", "model_version", "metric", "window", "value", "n_labels"}
        assert 0 <= r["value"] <= 1 and r["n_labels"] > 0 and r["measured_at"] == 123.0
    auc = next(r for r in rows if r["metric"] == "roc_auc" and r["window"] == "28d")
    assert auc["value"] > 0.8  # decision-time scores; the toy is easy once labels come in
    # Only settled decisions count: nothing younger than the maturity horizon (day 13 of 20),
    # and nothing decided while the model was warming up (negatives first matured on day 7).
    t = np.linspace(0, 20 * DAY_MS, 8000).astype(np.int64)
    assert 7 * DAY_MS <= models.ready_from_ms < 13 * DAY_MS
    assert auc["n_labels"] == int(np.sum((t >= models.ready_from_ms) & (t <= 13 * DAY_MS)))


def test_drift_alert_fires_when_confirmed_fraud_starts_scoring_low():
    models = FraudModels(NAMES, capacity=10_000, min_positives=0, min_negatives=0)  # scores given
    X = np.ones((1, 4), np.float32)
    n = 400
    ids = _ids("t", 2 * n)
    # Scores given at decision time: fraud used to score 0.9, then a new pattern scores 0.1.
    scores = np.r_[np.full(n, 0.9), np.full(n, 0.1)].astype(np.float32)
    models.remember(ids, np.repeat(X, 2 * n, 0), np.arange(2 * n), scores=scores)
    for s in range(0, n, 50):
        models.learn_from_labels(ids[s:s + 50], np.ones(50, np.int8), np.full(50, 10))
    assert models.drift_alerts() == []
    for s in range(n, 2 * n, 50):
        models.learn_from_labels(ids[s:s + 50], np.ones(50, np.int8), np.full(50, 10))
    alerts = models.drift_alerts()
    assert alerts and alerts[0]["signal"] == "fraud_score" and "missed fraud" in alerts[0]["meaning"]
    assert models.drift_alerts() == []  # only new alerts


def test_adwin_detections_match_rivers_own_update():
    """feed_drift calls River's Rust window directly; its detections, and the window left
    behind, must be what feeding ``ADWIN.update`` one value at a time gives."""
    from river import drift

    rng = np.random.default_rng(5)
    # Three regimes, so the window detects more than once, fed in uneven slices.
    errors = np.r_[rng.normal(0.1, 0.05, 3000), rng.normal(0.6, 0.05, 3000), rng.normal(0.2, 0.05, 3000)]
    models = FraudModels(NAMES, capacity=100)
    reference = drift.ADWIN(delta=models.drift_delta)
    expected = []
    for e in errors.tolist():
        reference.update(e)
        if reference.drift_detected:
            expected.append((reference.width, round(reference.estimation, 9)))
    cuts = np.r_[0, np.sort(rng.choice(np.arange(1, len(errors)), 40, replace=False)), len(errors)]
    for start, stop in zip(cuts[:-1], cuts[1:]):
        models.feed_drift("fraud_score", errors[start:stop], "test")
    got = [(a["window"], round(a["mean_error_now"], 9)) for a in models.drift_alerts()]
    assert len(expected) >= 2 and got == expected
    fed = models.drift_window("fraud_score")
    assert (fed.width, fed.drift_detected) == (reference.width, reference.drift_detected)


@pytest.mark.parametrize("module", ["base", "fraud", "fraud_detectors", "credit", "evaluate"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(f"riskstream.detectors.{module}"))
    assert result.attempted > 0 and result.failed == 0


def test_hash_ids_is_stable_across_calls_and_types():
    a = hash_ids(np.array(["x", "y"], dtype=object))
    assert a.dtype == np.uint64 and a[0] != a[1]
    np.testing.assert_array_equal(a, hash_ids(["x", "y"]))
    np.testing.assert_array_equal(hash_ids(np.array([12])), hash_ids(["12"]))


def test_refresh_survives_a_constant_feature_without_invalid_sqrt():
    # A constant feature's batch variance E[x^2] - mean^2 cancels to about -1e-17; it used to
    # reach np.sqrt ("invalid value encountered in sqrt") and River's complex square root.
    det = LinearFraudDetector(NAMES, scale_from_traffic=True, negative_keep_rate=1.0)
    X = np.column_stack([np.full(1000, 0.1), np.arange(1000), np.full(1000, 3.3), np.ones(1000)]).astype(np.float32)
    with warnings.catch_warnings(), np.errstate(invalid="raise"):
        warnings.simplefilter("error")
        det.observe_many(X)
        det.observe_many(X[:7])
        det.learn_many(X[:300], np.r_[np.ones(30), np.zeros(270)])
        p = det.score_many(X[:5])
    assert all(v >= 0 for v in det.scaler.vars.values())
    assert det.inv_std_[0] == 0 and det.inv_std_[2] == 0 and det.inv_std_[1] > 0
    assert np.isfinite(p).all()


def test_numpy_scaler_update_and_transform_match_river_bit_for_bit():
    rng = np.random.default_rng(4)
    fast = LinearFraudDetector(NAMES, scale_from_traffic=True)
    river = LinearFraudDetector(NAMES, scale_from_traffic=True)
    for n in (1, 7, 5000, 333):
        X = (rng.lognormal(2, 1, (n, 4)) * rng.choice([-1, 0, 1], (n, 4))).astype(np.float32)
        if n == 333:
            X[5, 1] = np.nan  # River's nanmean skips it (its variance does not): same here
        fast.observe_many(X)
        river.river_observe_many(X)
    for stat in ("means", "vars", "counts"):
        got, want = getattr(fast.scaler, stat), getattr(river.scaler, stat)
        assert got.keys() == want.keys()
        np.testing.assert_array_equal([got[c] for c in want], [want[c] for c in want])  # NaN == NaN here
    T = signed_log1p(X).astype(np.float64)
    frame = pd.DataFrame(T, columns=river.columns)
    np.testing.assert_array_equal(fast.scaled_frame(T).to_numpy(), river.scaler.transform_many(frame).to_numpy())


@pytest.mark.parametrize("positive_weight", [1.0, 5.0])
def test_learning_steps_match_rivers_learn_many_bit_for_bit(positive_weight):
    """LinearFraudDetector steps River's model on numpy batches (learn_scaled); the same
    mini-batches through River's public learn_many on frames must leave the same bits."""
    from river import linear_model, optim

    rng = np.random.default_rng(6)
    det = LinearFraudDetector(NAMES, positive_weight=positive_weight, seed=2)
    river = linear_model.LogisticRegression(optimizer=optim.Adam(0.05), l2=det.model.l2)
    for _ in range(40):
        n = int(rng.integers(1, 300))
        T = rng.normal(size=(n, 4)) * rng.random(4) * 3
        y = rng.random(n) < 0.2
        w = np.where(y, positive_weight, 1.0) if positive_weight != 1.0 else 1
        det.learn_scaled(T, y, w)
        # As the detector built its frames before: a view of the C-ordered rows (a copied frame
        # hands River an F-ordered matrix, whose gradient sums differ in the last bits).
        frame = pd.DataFrame(T, columns=det.column_index, copy=False)
        if isinstance(w, np.ndarray):
            river.learn_many(frame, pd.Series(y), w=pd.Series(w))
        else:
            river.learn_many(frame, pd.Series(y))
    got, want = det.model, river
    assert got.intercept == want.intercept and got.optimizer.n_iterations == want.optimizer.n_iterations == 40
    assert [got.weights[c] for c in det.columns] == [want.weights[c] for c in det.columns]
    assert [got.optimizer.m[c] for c in det.columns] == [want.optimizer.m[c] for c in det.columns]
    assert [got.optimizer.v[c] for c in det.columns] == [want.optimizer.v[c] for c in det.columns]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 101, 5000])
def test_quartiles_match_numpy_percentile(n):
    rng = np.random.default_rng(n)
    T = signed_log1p(rng.lognormal(1, 2, (n, 6)) * rng.choice([-1, 0, 1], (n, 6))).astype(np.float32)
    T[:, 0] = 0.25  # ties and a constant column
    np.testing.assert_array_equal(quartiles(T), np.percentile(T.astype(np.float64), [25, 50, 75], axis=0))
    T[0, 1] = np.nan  # NaNs take numpy's own path
    np.testing.assert_array_equal(quartiles(T), np.percentile(T.astype(np.float64), [25, 50, 75], axis=0))


def test_id_index_matches_a_dict_through_eviction_duplicates_and_rebuilds():
    """Reference: the dict the index replaced (newest slot per id, forgotten on overwrite)."""
    rng = np.random.default_rng(6)
    cap = 64
    models = FraudModels(NAMES, capacity=cap)
    X = np.ones((1, 4), np.float32)
    reference: dict[str, int] = {}
    slot_id: dict[int, str] = {}
    head, t, rebuilt = 0, 0, 0
    for _ in range(200):
        n = int(rng.integers(1, 30))
        ids = np.array([f"e{i}" for i in rng.integers(0, 400, n)], dtype=object)  # repeats too
        rows_before = models.id_index_load[0]
        models.remember(ids, np.repeat(X, n, 0), np.arange(t, t + n))
        rebuilt += models.id_index_load[0] < rows_before + n
        for i, event_id in enumerate(ids):
            slot = (head + i) % cap
            if slot_id.get(slot) is not None and reference.get(slot_id[slot]) == slot:
                del reference[slot_id[slot]]
            slot_id[slot] = event_id
            reference[event_id] = slot
        head, t = (head + n) % cap, t + n
        probe = np.array([f"e{i}" for i in range(400)], dtype=object)
        expected = [reference.get(e, -1) for e in probe]
        np.testing.assert_array_equal(models.slots_of(hash_ids(probe)), expected)
    assert rebuilt > 0  # stale rows were cleared by rebuilds along the way
    rows, size = models.id_index_load
    assert rows <= models.ID_INDEX_MAX_LOAD * size


def test_a_model_that_has_seen_one_outcome_has_no_say_until_it_has_seen_both():
    """Matured negatives alone (no labels flowing yet) used to random-walk the weights until
    clean traffic scored like fraud; the probability now waits for 20 positives and 200
    negatives, and decisions made meanwhile stay out of quality and drift."""
    rng = np.random.default_rng(4)
    X, y = _fraud_data(rng, 6000, fraud_rate=0.05)
    models = FraudModels(NAMES, capacity=20_000, maturity_ms=DAY_MS, seed=4)
    t = np.linspace(0, 6 * DAY_MS, 6000).astype(np.int64)
    ids = _ids("w", 6000)
    for s in range(0, 4000, 500):  # four days, no labels: negatives mature after one
        assert not (models.score(X[s:s + 500], NAMES).probability).any()
        models.remember(ids[s:s + 500], X[s:s + 500], t[s:s + 500])
    assert models.stats["settled_negatives"] > 200 and models.stats["settled_positives"] == 0
    assert not models.ready and models.version == (
        f"fraud-warming-up-pos0of20-neg{models.stats['settled_negatives']}of200")
    assert models.quality(measured_at=1.0) == [] and models.drift_alerts() == []
    # Chargebacks for the fraud among them: now both outcomes are known, and the model scores.
    pos = np.flatnonzero(y[:4000])
    models.learn_from_labels(ids[pos], np.ones(len(pos), np.int8), np.full(len(pos), 4 * DAY_MS))
    assert models.ready and models.version.startswith("fraud-lr")
    p = models.score(X[4000:], NAMES).probability
    assert p.min() > 0 and roc_auc(y[4000:], p) > 0.8


def test_negatives_held_before_the_first_positive_are_the_newest_ones():
    """Before any chargeback, matured negatives wait in a bounded hold; the first positives
    are learned together with the newest ``held_negatives`` of them, in maturity order."""
    rng = np.random.default_rng(9)
    X, y = _fraud_data(rng, 4000, fraud_rate=0.05)
    models = FraudModels(NAMES, capacity=20_000, maturity_ms=DAY_MS, seed=9, held_negatives=300)
    t = np.linspace(0, 4 * DAY_MS, 4000).astype(np.int64)
    ids = _ids("h", 4000)
    for s in range(0, 4000, 250):
        models.remember(ids[s:s + 250], X[s:s + 250], t[s:s + 250])
    matured = models.stats["settled_negatives"]
    assert matured > 2 * 300  # enough to have trimmed the hold at least once
    learned = []
    learn_many = models.linear.learn_many
    models.linear.learn_many = lambda Xs, ys: (learned.append((Xs.copy(), ys.copy())), learn_many(Xs, ys))
    pos = 3800 + np.flatnonzero(y[3800:])  # fraud not matured yet: its label settles it
    assert len(pos) > 0
    models.learn_from_labels(ids[pos], np.ones(len(pos), np.int8), np.full(len(pos), 4 * DAY_MS))
    X_all, y_all = learned[0]  # the hold and the first positives, in one call
    assert len(X_all) == 300 + len(pos) and int(y_all.sum()) == len(pos)
    np.testing.assert_array_equal(X_all[:300], X[matured - 300:matured].astype(np.float32))
