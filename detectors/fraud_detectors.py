"""The fraud detectors: a supervised River logistic regression and a cheap anomaly score, on
the detector contract (``detectors.base``), and the transforms they share.

Design, and why:

* **Supervised**: River ``StandardScaler`` then ``LogisticRegression``, learned with River's
  batch API (``learn_many`` on pandas frames, mini-batches of ``batch_rows``). Scoring does not
  call ``predict_proba_many`` (a fixed 4-10 ms per call): it reads the scaler's means and
  variances and the regression's weights into numpy arrays once per learn and computes the
  same logit with one matrix product, which also yields per-feature logit contributions for
  the reasons. ``LinearFraudDetector.river_proba_many`` is the River reference a parity test
  compares against. For the same reason the scaler's update from traffic and the scaling of
  learned mini-batches run River's formulas in numpy on River's own state (bit-identical,
  checked against ``river_observe_many`` and ``transform_many``): River's DataFrame handling
  cost more than the arithmetic.
* **Transforms** live in the detector, not in the features: every feature goes through a
  signed ``log1p`` (amounts, counts and ratios are heavy-tailed; the map is monotone, so flags
  and small values keep their order).
* **Imbalance** (fraud well under 1%): legit labels are undersampled at learn time, each kept
  with probability ``negative_keep_rate`` (default 0.1; every positive is kept). Undersampling
  multiplies the learned odds by ``1 / negative_keep_rate``, so scoring adds
  ``log(negative_keep_rate)`` to the logit to give calibrated probabilities back. It also cuts
  learning cost tenfold, which matters more online than class weights would (those keep every
  legit row). ``bench/fraud_quality.py`` measures the effect against no handling and weights.
* **Anomaly**: ``HalfSpaceTrees`` costs ~44 µs per event, far over a 5 µs budget, so the
  anomaly score is a robust z-score: per feature, the streaming median and inter-quartile
  range of the transformed values (exponentially weighted batch quantiles), and
  ``s / (s + 9)`` of the mean squared z (capped). It is numpy-vectorised (well under 1 µs per
  event), needs no labels, and explains itself ("amount 9 IQRs above its median").
"""

from __future__ import annotations
import math
from functools import cached_property, partial
from typing import Sequence
import numpy as np
import pandas as pd
from river import linear_model, optim, preprocessing
from riskstream.detectors.base import Detector, DetectorError
from riskstream.detectors.features import id_hashes


def default_feature_names() -> tuple[str, ...]:
    """The streaming feature engine's columns (the registry's factories use them)."""
    from riskstream.detectors.features import FEATURE_NAMES

    return tuple(FEATURE_NAMES)


def signed_log1p(X: np.ndarray) -> np.ndarray:
    """Heavy tails in, roughly symmetric out; monotone and 0 -> 0."""
    X = np.asarray(X, dtype=np.float32)
    # copysign in place: the same values as sign(X) * log1p(|X|) with one temporary, not three
    out = np.abs(X)
    np.log1p(out, out=out)
    return np.copysign(out, X, out=out)


def hash_ids(ids: np.ndarray | Sequence) -> np.ndarray:
    """Event or card ids to uint64: the feature engine's id hash (FNV-1a + splitmix64 of the
    UTF-8 bytes, one jitted pass per batch), so the same id hashes the same in every process
    and replay; ``""`` hashes to 0 (absent). Integer ids hash as their decimal strings.
    64 bits: a collision among a million ids has odds ~1e-8."""
    arr = np.asarray(ids)
    if arr.dtype.kind in "iu":
        arr = arr.astype(np.int64).astype(str)
    try:
        hashes = id_hashes(arr)
    except TypeError:  # an object array holding non-strings (ints, None): hash their str
        hashes = id_hashes([str(v) for v in arr.tolist()])
    return hashes.view(np.uint64)


def quartiles(T: np.ndarray) -> np.ndarray:
    """``np.percentile(T, [25, 50, 75], axis=0)``, bit for bit, from a sort of the columns.

    numpy's multi-rank ``partition`` costs ~4.5 ms on a 5,000 x 36 batch; sorting the
    transposed float32 columns costs ~0.6 ms, and the order statistics of float32 values are
    exact in float64, so the same linear interpolation (numpy's ``_lerp``, which counts from
    the upper neighbour when the weight is >= 0.5) gives the same numbers. NaNs sort
    differently from numpy's NaN handling, so a batch holding any takes ``np.percentile``.
    """
    T = np.asarray(T)
    if T.dtype != np.float32 or np.isnan(T).any():
        return np.percentile(np.asarray(T, np.float64), [25, 50, 75], axis=0)
    n = T.shape[0]
    S = np.sort(T.T, axis=1)
    out = np.empty((3, T.shape[1]), np.float64)
    for row, q in enumerate((0.25, 0.5, 0.75)):
        v = q * (n - 1)
        lo = int(math.floor(v))
        hi = min(lo + 1, n - 1)
        g = v - lo
        a = S[:, lo].astype(np.float64)
        b = S[:, hi].astype(np.float64)
        diff = b - a
        out[row] = b - diff * (1 - g) if g >= 0.5 else a + diff * g
    return out


# --------------------------------------------------------------------------------------
# Supervised: River StandardScaler | LogisticRegression
# --------------------------------------------------------------------------------------
class LinearFraudDetector(Detector):
    """Online logistic regression on signed-log features, with negative undersampling.

    >>> import numpy as np
    >>> det = LinearFraudDetector(["amount", "count"], negative_keep_rate=1.0)
    >>> X = np.array([[10, 1], [5000, 9]] * 200, dtype=np.float32)
    >>> for _ in range(20):  # each mini-batch of 256 rows is one optimiser step
    ...     det.learn_many(X, np.array([0, 1] * 200))
    >>> p = det.score_many(X[:2]); bool(p[1] > 0.9 > 0.1 > p[0])
    True
    """

    name = "fraud_linear"

    def __init__(self, feature_names: Sequence[str], *, negative_keep_rate: float = 0.1,
                 positive_weight: float = 1.0, learning_rate: float = 0.05, l2: float = 1e-4,
                 batch_rows: int = 256, scale_from_traffic: bool = False, seed: int = 0):
        super().__init__(feature_names)
        if not 0 < negative_keep_rate <= 1:
            raise DetectorError("negative_keep_rate must be in (0, 1]")
        self.negative_keep_rate = negative_keep_rate
        self.positive_weight = positive_weight
        self.batch_rows = batch_rows
        # Standardise against all traffic (fed by `observe_many`) rather than the learned rows:
        # labels are delayed, so for the first maturity horizon only positives are learned, and
        # a scaler fitted on positives alone centres on fraud and inverts every weight.
        self.scale_from_traffic = scale_from_traffic
        self.columns = [str(n) for n in self.feature_names]
        self.scaler = preprocessing.StandardScaler()
        # Adam: one mean-gradient step per mini-batch would crawl with plain SGD at this rate
        # of steps; Adam's per-coordinate steps make the rare-fraud weights move.
        self.model = linear_model.LogisticRegression(optimizer=optim.Adam(learning_rate), l2=l2)
        self.rng = np.random.default_rng(seed)
        self._refresh()

    # ----- learning -------------------------------------------------------------------------
    def learn_many(self, X: np.ndarray, y: np.ndarray | None) -> None:
        X = self.check_matrix(X)
        if y is None:
            raise DetectorError(f"{self.name} is supervised: learn_many needs labels")
        y = np.asarray(y).astype(bool)
        keep = y | (self.rng.random(len(y)) < self.negative_keep_rate)
        X, y = X[keep], y[keep]
        if len(X) == 0:
            return
        if self.scale_from_traffic and not self.scaler.counts:
            self.observe_many(X)  # nothing observed yet: scale from what there is
        order = self.rng.permutation(len(X))  # mixes positives into negative-heavy sweeps
        T = signed_log1p(X[order]).astype(np.float64)
        y = y[order]
        for start in range(0, len(T), self.batch_rows):
            rows = T[start:start + self.batch_rows]
            target = y[start:start + self.batch_rows]
            if not self.scale_from_traffic:
                self.scaler.learn_many(pd.DataFrame(rows, columns=self.column_index, copy=False))
                self._floor_variances()
            w = np.where(target, self.positive_weight, 1.0) if self.positive_weight != 1.0 else 1
            self.learn_scaled(self.scaled(rows), target, w)
        self.n_learned += len(X)
        self._refresh()

    def observe_many(self, X: np.ndarray) -> None:
        """Update the feature scaling with unlabelled traffic (when ``scale_from_traffic``)."""
        X = self.check_matrix(X)
        if len(X):
            self.observe_signed_log(signed_log1p(X))

    def observe_signed_log(self, T: np.ndarray) -> None:
        """``observe_many`` for rows already through ``signed_log1p`` (FraudModels shares
        them with the anomaly statistics).

        The update is River's ``StandardScaler.learn_many``, same formula, same operation
        order, so the same bits (``river_observe_many`` is the reference a parity test
        compares against), done on the scaler's own dicts: River builds and inspects a
        DataFrame per call (pandas + narwhals), ~4 ms for a 5,000-row batch of 36 columns,
        which was most of ``remember``.
        """
        T = np.asarray(T, dtype=np.float64)
        if len(T) == 0:
            return
        scaler, cols = self.scaler, self.columns
        nan = np.isnan(T)
        if nan.any():
            new_means = np.nanmean(T, axis=0)
            new_counts = np.sum(~nan, axis=0)
        else:  # what nanmean computes without NaNs (the same sum and division), minus its copy
            new_means = T.mean(axis=0)
            new_counts = np.full(T.shape[1], len(T), dtype=np.int64)
        new_vars = np.einsum("ij,ij->j", T, T) / len(T) - new_means**2
        old_means = np.array([scaler.means[c] for c in cols], dtype=np.float64)
        old_vars = np.array([scaler.vars[c] for c in cols], dtype=np.float64)
        old_counts = np.array([scaler.counts[c] for c in cols], dtype=np.int64)
        a = old_counts / (old_counts + new_counts)
        b = new_counts / (old_counts + new_counts)
        means = a * old_means + b * new_means
        vars_ = a * old_vars + b * new_vars + a * b * (old_means - new_means) ** 2
        for c, m, v, k in zip(cols, means.tolist(), vars_.tolist(), new_counts.tolist()):
            scaler.means[c] = m
            scaler.vars[c] = v
            scaler.counts[c] += k
        self._floor_variances()
        self._refresh()

    def river_observe_many(self, X: np.ndarray) -> None:
        """``observe_many`` through River's own ``learn_many`` (reference for parity tests)."""
        X = self.check_matrix(X)
        if len(X):
            self.scaler.learn_many(pd.DataFrame(signed_log1p(X).astype(np.float64), columns=self.column_index, copy=False))
            self._floor_variances()
            self._refresh()

    @cached_property
    def column_index(self) -> pd.Index:
        """The frames' column labels, built once: pandas turns a list of names into an Index on
        every ``DataFrame(...)``, and River's learn_many looks at the columns again; with the
        Index given, a 256-row learn_many took 355 us instead of 660 (measured)."""
        return pd.Index(self.columns)

    def learn_scaled(self, scaled: np.ndarray, y: np.ndarray, w: float | np.ndarray = 1) -> None:
        """One mini-batch step of River's ``LogisticRegression.learn_many`` on scaled rows, as
        numpy. These are the steps its ``learn_many`` takes once narwhals has turned the frame
        into a numpy matrix, so the bits are River's (a test steps both side by side): ~70 us a
        256-row mini-batch against ~370 through a frame. C order, as River's conversion gives
        it: another layout sums the gradient in another order and moves the last bits."""
        model = self.model
        saved = model._enter_learn_mode(set(self.columns))
        try:
            model._fit(x=self.columns, y=y, w=w,
                       get_grad=partial(model._eval_gradient_many, np.ascontiguousarray(scaled, dtype=np.float64)))
        finally:
            model._exit_learn_mode(saved)

    def scaled_frame(self, T: np.ndarray) -> pd.DataFrame:
        """``scaled`` as the frame River's own calls take."""
        return pd.DataFrame(self.scaled(T), columns=self.column_index, copy=False)

    def scaled(self, T: np.ndarray) -> np.ndarray:
        """River's ``StandardScaler.transform_many`` of signed-log rows, in numpy with the same
        arithmetic (a parity test checks the bits): River inspects the frame's schema through
        narwhals on every call, ~2/3 of the cost of learning a 256-row mini-batch."""
        scaler = self.scaler
        means = np.array([scaler.means[c] for c in self.columns], dtype=np.float64)
        stds = np.array([scaler.vars[c] ** 0.5 for c in self.columns], dtype=np.float64)
        scaled = np.asarray(T, dtype=np.float64) - means
        np.divide(scaled, stds, where=stds > 0, out=scaled)
        return scaled

    # River's batch variance is E[x^2] - mean^2 merged with the running one: for a constant
    # feature that cancels to +-1e-17 instead of 0. Negative, River's own transform_many takes
    # a complex square root and numpy's sqrt warns "invalid value"; tiny positive, a feature
    # that never varied gets a 1e7 inverse scale and the first different value a huge logit.
    # Float32 inputs resolve ~1e-7 relative, so a variance under 1e-12 (1 + mean^2) is noise.
    VARIANCE_FLOOR = 1e-12

    def _floor_variances(self) -> None:
        means = self.scaler.means
        vars_ = self.scaler.vars
        for c, v in list(vars_.items()):
            if v < self.VARIANCE_FLOOR * (1.0 + means[c] ** 2):
                vars_[c] = 0.0

    def _refresh(self) -> None:
        """Copy River's parameters into numpy for scoring (after each learn, not per score)."""
        means = self.scaler.means
        vars_ = self.scaler.vars
        weights = self.model.weights
        self.mean_ = np.array([means.get(c, 0.0) for c in self.columns], dtype=np.float32)
        # Clipped too, for scalers restored from checkpoints written before the floor.
        std = np.sqrt(np.maximum(np.array([vars_.get(c, 0.0) for c in self.columns], dtype=np.float64), 0.0))
        # River's scaler maps a zero-variance feature to 0: an inverse scale of 0 does the same.
        self.inv_std_ = np.where(std > 0, 1.0 / np.where(std > 0, std, 1.0), 0.0).astype(np.float32)
        self.weight_ = np.array([weights.get(c, 0.0) for c in self.columns], dtype=np.float32)
        # Undersampling prior correction (see module docstring).
        self.offset_ = np.float32(self.model.intercept + math.log(self.negative_keep_rate))

    # ----- scoring --------------------------------------------------------------------------
    def contributions(self, X: np.ndarray) -> np.ndarray:
        """Logit contribution of each feature, weight * scaled value: float32 (n, d)."""
        X = self.check_matrix(X)
        return (signed_log1p(X) - self.mean_) * (self.inv_std_ * self.weight_)

    def logit_many(self, X: np.ndarray) -> np.ndarray:
        return self.contributions(X).sum(axis=1) + self.offset_

    def score_many(self, X: np.ndarray) -> np.ndarray:
        return sigmoid(self.logit_many(X))

    def river_proba_many(self, X: np.ndarray) -> np.ndarray:
        """The same probability through River's own batch API (reference for parity tests)."""
        frame = pd.DataFrame(signed_log1p(self.check_matrix(X)).astype(np.float64), columns=self.column_index)
        p = self.model.predict_proba_many(self.scaler.transform_many(frame))[True].to_numpy()
        logit = np.log(p / (1 - p)) + math.log(self.negative_keep_rate)
        return (1 / (1 + np.exp(-logit))).astype(np.float32)

    def _state(self) -> object:
        return {"scaler": self.scaler, "model": self.model, "rng": self.rng}

    def _load(self, state: object) -> None:
        self.scaler, self.model, self.rng = state["scaler"], state["model"], state["rng"]
        self._refresh()


def sigmoid(z: np.ndarray) -> np.ndarray:
    # Clipped where float32 still tells values apart (sigmoid(-80) ~ 1.8e-35): clipped at -30, a
    # model whose logits had drifted below it gave a day's traffic one score, and no ranking.
    z = np.clip(np.asarray(z, dtype=np.float32), -80, 80)
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


# --------------------------------------------------------------------------------------
# Unsupervised: robust z-scores against streaming medians and IQRs
# --------------------------------------------------------------------------------------
class RobustZAnomalyDetector(Detector):
    """Anomaly in [0, 1] from how many robust standard deviations a transaction sits from the
    usual, feature by feature.

    >>> import numpy as np
    >>> det = RobustZAnomalyDetector(["amount"])
    >>> det.learn_many(np.random.default_rng(0).lognormal(3, 0.5, (5000, 1)).astype(np.float32), None)
    >>> low, high = det.score_many(np.array([[20.0], [5000.0]], dtype=np.float32))
    >>> bool(low < 0.2 < 0.5 < high)
    True
    """

    name = "fraud_robust_z"
    supervised = False
    Z_CAP = 20.0  # one absurd feature should not drown the others

    def __init__(self, feature_names: Sequence[str], *, memory_events: int = 200_000):
        super().__init__(feature_names)
        d = len(self.feature_names)
        # After memory_events the statistics forget exponentially, so they follow slow drift.
        self.memory_events = memory_events
        self.median_ = np.zeros(d, np.float64)
        self.iqr_ = np.zeros(d, np.float64)
        self.mean_ = np.zeros(d, np.float64)
        self.var_ = np.zeros(d, np.float64)
        self._refresh()

    def learn_many(self, X: np.ndarray, y: np.ndarray | None = None) -> None:
        X = self.check_matrix(X)
        if len(X):
            self.learn_signed_log(signed_log1p(X))

    def learn_signed_log(self, T32: np.ndarray) -> None:
        """``learn_many`` for rows already through ``signed_log1p`` (float32)."""
        if len(T32) == 0:
            return
        q25, q50, q75 = quartiles(T32)
        n = len(T32)
        a = n / min(self.n_learned + n, self.memory_events) if self.n_learned else 1.0
        a = min(a, 1.0)
        self.median_ += a * (q50 - self.median_)
        self.iqr_ += a * ((q75 - q25) - self.iqr_)
        # Sums of x and x^2 in float64 straight from the float32 rows: ``T.var(axis=0)`` on a
        # float64 copy took 1.5 ms a 5,000-row batch here, and 6 ms on average during an
        # offline replay (fresh temporaries of the batch's size, page faults); this takes
        # 0.3 ms. The values are signed logs (|x| < 30), so E[x^2] - E[x]^2 in float64 agrees
        # with the two-pass variance to ~1e-14.
        batch_mean = np.einsum("ij->j", T32, dtype=np.float64) / n
        batch_var = np.maximum(np.einsum("ij,ij->j", T32, T32, dtype=np.float64) / n - batch_mean**2, 0.0)
        delta = batch_mean - self.mean_
        self.var_ = (1 - a) * (self.var_ + a * delta**2) + a * batch_var
        self.mean_ += a * delta
        self.n_learned += n
        self._refresh()

    def _refresh(self) -> None:
        # A feature that is almost always one value (a fraud flag, a zero count) has IQR 0:
        # fall back to its standard deviation, so a rare non-zero value is a large z.
        scale = np.where(self.iqr_ > 1e-6, self.iqr_ / 1.349, np.sqrt(self.var_))
        self.inv_scale_ = (1.0 / (scale + 1e-3)).astype(np.float32)
        self.center_ = self.median_.astype(np.float32)

    def z_scores(self, X: np.ndarray) -> np.ndarray:
        X = self.check_matrix(X)
        return np.clip((signed_log1p(X) - self.center_) * self.inv_scale_, -self.Z_CAP, self.Z_CAP)

    def score_many(self, X: np.ndarray) -> np.ndarray:
        z = self.z_scores(X)
        s = np.einsum("ij,ij->i", z, z) / max(z.shape[1], 1)
        return (s / (s + 9.0)).astype(np.float32)

    def _state(self) -> object:
        return {k: getattr(self, k) for k in ("median_", "iqr_", "mean_", "var_")}

    def _load(self, state: object) -> None:
        for k, v in state.items():
            setattr(self, k, v)
        self._refresh()
