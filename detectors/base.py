"""The one contract every riskstream detector follows, its registry, and the shared checks.

A detector scores feature vectors into risk in [0, 1] and learns from labels, on one event or
on a batch. The batch methods are the hot path (the worker scores columnar batches of a few
thousand transactions); the one-event methods exist for tools, notebooks and the parity checks.

Every detector:

* ``feature_names``: the column order of ``X``;
* ``score_many(X) -> float32[n]`` in [0, 1], ``X`` float32 of shape (n, len(feature_names));
* ``learn_many(X, y)``: ``y`` 0/1 (unsupervised detectors accept ``y=None``);
* ``score_one(x: dict) -> float`` / ``learn_one(x: dict, y)``;
* ``version``: a string that changes whenever the detector learns (decision rows record it);
* ``checkpoint() -> bytes`` / ``restore(blob)``.

Checkpoints are pickles of the detector's state (River estimators pickle well). Unpickling runs
code, so ``restore`` must only ever be given checkpoints that riskstream itself wrote (its own
state store); never load a checkpoint from an untrusted place.

The detectors are listed in :func:`detector_factories`, one zero-argument factory per name.

>>> sorted(n for n in detector_factories() if n.startswith("fraud"))
['fraud_linear', 'fraud_models', 'fraud_robust_z']
>>> check_detector(detector_factories()["fraud_robust_z"])  # the same checks the test suite runs
"""

from __future__ import annotations

import pickle
from abc import ABC, abstractmethod
from typing import Callable, Mapping, Sequence

import numpy as np

PICKLE_PROTOCOL = 5


class DetectorError(Exception):
    """A detector was misused: wrong shape, unknown name, duplicate registration."""


class Detector(ABC):
    """Base class: subclasses implement ``score_many``, ``learn_many`` and ``_state``/``_load``."""

    name: str = "detector"
    #: True when ``score_one`` row by row gives exactly ``score_many`` (checked by the suite).
    batch_equals_one: bool = True
    #: False for unsupervised detectors: ``learn_many`` ignores ``y``.
    supervised: bool = True

    def __init__(self, feature_names: Sequence[str]):
        self.feature_names: tuple[str, ...] = tuple(feature_names)
        self.n_learned = 0  # events learned from; drives ``version``

    # ----- the contract -----------------------------------------------------------------
    @property
    def version(self) -> str:
        return f"{self.name}-{self.n_learned}"

    @abstractmethod
    def score_many(self, X: np.ndarray) -> np.ndarray:
        """Risk in [0, 1] for each row of ``X`` (float32, shape (n, d)); returns float32[n]."""

    @abstractmethod
    def learn_many(self, X: np.ndarray, y: np.ndarray | None) -> None:
        """Learn from a batch; must add the number of rows learned to ``n_learned``."""

    def score_one(self, x: Mapping[str, float]) -> float:
        return float(self.score_many(self.vector(x)[None, :])[0])

    def learn_one(self, x: Mapping[str, float], y: int | bool | None) -> None:
        self.learn_many(self.vector(x)[None, :], None if y is None else np.array([int(y)], dtype=np.int8))

    def checkpoint(self) -> bytes:
        return pickle.dumps({"n_learned": self.n_learned, "state": self._state()}, protocol=PICKLE_PROTOCOL)

    def restore(self, blob: bytes) -> None:
        # Only our own checkpoints are loaded (see module docstring): pickle is acceptable.
        data = pickle.loads(blob)
        self.n_learned = data["n_learned"]
        self._load(data["state"])

    @abstractmethod
    def _state(self) -> object: ...

    @abstractmethod
    def _load(self, state: object) -> None: ...

    # ----- helpers ------------------------------------------------------------------------
    def vector(self, x: Mapping[str, float]) -> np.ndarray:
        """One event as a float32 row in ``feature_names`` order; a missing feature is an error."""
        try:
            return np.array([x[name] for name in self.feature_names], dtype=np.float32)
        except KeyError as exc:
            raise DetectorError(f"{self.name}: missing feature {exc.args[0]!r}") from None

    def check_matrix(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != len(self.feature_names):
            raise DetectorError(
                f"{self.name}: expected shape (n, {len(self.feature_names)}), got {X.shape}"
            )
        return X


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------
def detector_factories() -> dict[str, Callable[[], Detector]]:
    """Every detector riskstream has, by name: zero-argument factories, the list the shared
    checks run over. Built when asked (no import fills it); a name given twice raises, so two
    detectors cannot silently shadow each other."""
    from riskstream.detectors.fraud import FraudModels
    from riskstream.detectors.fraud_detectors import LinearFraudDetector, RobustZAnomalyDetector, default_feature_names

    return named_factories([
        ("fraud_linear", lambda: LinearFraudDetector(default_feature_names())),
        ("fraud_robust_z", lambda: RobustZAnomalyDetector(default_feature_names())),
        # A small ring: the checks learn 20k rows; the worker's holds a million decisions.
        ("fraud_models", lambda: FraudModels(default_feature_names(), capacity=50_000, held_negatives=10_000)),
    ])


def named_factories(pairs: Sequence[tuple[str, Callable[[], Detector]]]) -> dict[str, Callable[[], Detector]]:
    out: dict[str, Callable[[], Detector]] = {}
    for name, factory in pairs:
        if name in out:
            raise DetectorError(f"detector {name!r} is listed twice")
        out[name] = factory
    return out


# --------------------------------------------------------------------------------------
# The shared check suite (River's `checks` idea): one function, run over every detector.
# --------------------------------------------------------------------------------------
def _toy_problem(rng: np.random.Generator, n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Positive, heavy-tailed features (like amounts and counts); the label is 'feature 0 is
    high', so every detector (including ones with log transforms or derived ratios) can learn it."""
    X = rng.lognormal(mean=1.0, sigma=0.8, size=(n, d)).astype(np.float32)
    y = (X[:, 0] > np.median(X[:, 0])).astype(np.int8)
    return X, y


def _auc(score: np.ndarray, y: np.ndarray) -> float:
    from riskstream.detectors.evaluate import roc_auc

    return roc_auc(y, score)


def _log_loss(score: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(score.astype(np.float64), 1e-6, 1 - 1e-6)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def check_detector(factory: Callable[[], Detector], seed: int = 7) -> None:
    """Raise AssertionError if the detector built by ``factory`` breaks the contract."""
    rng = np.random.default_rng(seed)
    det = factory()
    name = getattr(det, "name", factory)
    d = len(det.feature_names)
    assert d > 0, f"{name}: no feature names"
    X, y = _toy_problem(rng, 20_000, d)
    X_test, y_test = _toy_problem(rng, 2000, d)

    def valid(scores: np.ndarray, n: int, what: str) -> None:
        assert isinstance(scores, np.ndarray) and scores.dtype == np.float32, f"{name}: {what}: dtype {scores.dtype}"
        assert scores.shape == (n,), f"{name}: {what}: shape {scores.shape}, expected ({n},)"
        assert np.all(np.isfinite(scores)), f"{name}: {what}: non-finite scores"
        assert np.all((scores >= 0) & (scores <= 1)), f"{name}: {what}: scores outside [0, 1]"

    # Untrained: valid scores, also on all-zero rows (a new card has every count at 0).
    valid(det.score_many(X_test), len(X_test), "untrained")
    valid(det.score_many(np.zeros((5, d), np.float32)), 5, "untrained, all-zero rows")
    valid(det.score_many(np.zeros((0, d), np.float32)), 0, "empty batch")
    before = det.score_many(X_test)
    v0 = det.version

    # Learn in mini-batches, the way the worker feeds it.
    for start in range(0, len(X), 1000):
        det.learn_many(X[start:start + 1000], y[start:start + 1000] if det.supervised else None)
    assert det.version != v0, f"{name}: version did not change after learning"
    after = det.score_many(X_test)
    valid(after, len(X_test), "trained")
    valid(det.score_many(np.zeros((5, d), np.float32)), 5, "trained, all-zero rows")

    if det.supervised:
        assert _auc(after, y_test) > 0.9, f"{name}: ROC AUC {_auc(after, y_test):.3f} after learning a separable toy"
        assert _log_loss(after, y_test) < _log_loss(before, y_test), f"{name}: log loss did not improve"
    else:
        # Unsupervised: events far outside what was learned must rank above typical ones.
        outliers = X_test[:200] * 30.0
        mixed = np.vstack([X_test[:2000], outliers])
        is_outlier = np.r_[np.zeros(2000, np.int8), np.ones(200, np.int8)]
        auc_after = _auc(det.score_many(mixed), is_outlier)
        assert auc_after > 0.9, f"{name}: outlier ROC AUC {auc_after:.3f} after learning"

    # One event at a time gives the batch answer where promised.
    if det.batch_equals_one:
        for i in range(10):
            one = det.score_one(dict(zip(det.feature_names, X_test[i].tolist())))
            assert abs(one - float(after[i])) < 1e-5, f"{name}: score_one {one} != score_many {after[i]}"
    v1 = det.version
    det.learn_one(dict(zip(det.feature_names, X[0].tolist())), int(y[0]) if det.supervised else None)
    assert det.version != v1, f"{name}: version did not change after learn_one"

    # Checkpoint round trip reproduces scores and version.
    blob = det.checkpoint()
    assert isinstance(blob, bytes)
    twin = factory()
    twin.restore(blob)
    assert twin.version == det.version, f"{name}: version {twin.version} != {det.version} after restore"
    np.testing.assert_array_equal(twin.score_many(X_test), det.score_many(X_test), err_msg=f"{name}: restore")

    # Wrong shapes fail loudly instead of scoring garbage.
    try:
        det.score_many(np.zeros((3, d + 1), np.float32))
    except DetectorError:
        pass
    else:
        raise AssertionError(f"{name}: accepted a matrix with the wrong number of features")
