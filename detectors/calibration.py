"""Platt scaling: a model's score mapped to the fraud rate it stands for on recent settled
decisions, so that a probability of 0.3 means about 30% and a threshold means what it says.

Why Platt rather than isotonic regression: a fraud week settles a few hundred frauds, and
isotonic regression fitted on that few steps and flattens the top of the ranking into ties
(which costs AP and Card Precision@k); Platt's two parameters on the score's logit are
monotone, so the ranking and every rank metric stay as they were. Why it is needed at all:
the online logistic regression learns from one legit transaction in ten (its odds are ten
times too high), and the trees' odds correction assumes the traffic they were trained on.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> raw = rng.uniform(0.01, 0.99, 20_000)
>>> truth = raw / (raw + 10 * (1 - raw))  # the score's odds are ten times too high
>>> y = (rng.random(20_000) < truth).astype(np.int8)
>>> c = PlattCalibration.fit(raw, y)
>>> round(float(c.apply(np.array([0.5]))[0]), 2)  # odds 1 / 10
0.09
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPS = 1e-38  # probabilities are float32: as small as they come, still apart on the logit scale
# Slopes a calibration may have: outside, the scores hardly rank the outcomes (or a fit on few
# frauds ran away), and a steep slope squeezed a whole day's scores into float32 ties.
SLOPES = (0.05, 20.0)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - 1e-15)  # (1 - 1e-38 is 1 in float64)
    return np.log(p) - np.log1p(-p)


@dataclass(frozen=True)
class PlattCalibration:
    """``sigmoid(slope * logit(score) + intercept)``; the identity is slope 1, intercept 0."""

    slope: float = 1.0
    intercept: float = 0.0
    decisions: int = 0  # what it was fitted on
    frauds: int = 0

    @classmethod
    def fit(cls, score: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None,
            iterations: int = 50, reported_share: np.ndarray | None = None) -> "PlattCalibration | None":
        """Maximum likelihood by damped Newton steps on Platt's smoothed targets (a fraud counts
        (N+ + 1) / (N+ + 2), a legit one 1 / (N- + 2)), which keeps the fit finite when the
        scores separate the classes perfectly; ``weight``: how many cases each row stands for (a
        sample of the legit ones). None when the scores do not rank (a slope outside
        ``SLOPES``): the caller keeps the calibration it has.

        ``reported_share``: per row, the chance a fraud of its age has been reported by now.
        A row not reported may then be a fraud still to come: the fit alternates between the
        chance of that under the current fit, p (1 - r) / (1 - p r), taken as the row's target,
        and a fit to those targets (expectation-maximisation for outcomes seen late).
        Counted as legit instead, they held the probability at a half to a fifth of the fraud
        rate seen later (docs/model-quality.md, the demo)."""
        z = _logit(score)
        y = np.asarray(y).astype(bool)
        c = np.ones(len(y)) if weight is None else np.asarray(weight, dtype=np.float64)
        n_pos, n_neg = float(c[y].sum()), float(c[~y].sum())
        t_pos, t_neg = (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0)
        t = np.where(y, t_pos, t_neg)
        a, b = _newton(z, t, c, 1.0, float(np.log((n_pos + 1.0) / (n_neg + 1.0))), iterations)
        if reported_share is not None:
            r = np.clip(np.asarray(reported_share, dtype=np.float64), 0.0, 1.0)
            for _ in range(EM_ROUNDS):
                p = 1.0 / (1.0 + np.exp(-np.clip(a * z + b, -700, 700)))
                t = np.where(y, t_pos, np.maximum(p * (1 - r) / (1 - p * r), t_neg))
                previous = (a, b)
                a, b = _newton(z, t, c, a, b, iterations)
                if abs(a - previous[0]) + abs(b - previous[1]) < 1e-3:
                    break
        if not (np.isfinite(a) and np.isfinite(b)) or not SLOPES[0] <= a <= SLOPES[1]:
            return None
        return cls(float(a), float(b), len(y), int(y.sum()))

    def apply(self, score: np.ndarray) -> np.ndarray:
        if self.slope == 1.0 and self.intercept == 0.0:
            return np.asarray(score, dtype=np.float32)
        z = self.slope * _logit(score) + self.intercept
        return (1.0 / (1.0 + np.exp(-np.clip(z, -700, 700)))).astype(np.float32)

    def describe(self) -> str:
        return (f"platt slope {self.slope:.3f} intercept {self.intercept:+.3f} "
                f"({self.frauds} frauds in {self.decisions:,} settled decisions)")


EM_ROUNDS = 8  # at most; the rounds stop once slope and intercept move by under 0.001


def _newton(z: np.ndarray, t: np.ndarray, c: np.ndarray, a: float, b: float, iterations: int) -> tuple[float, float]:
    """Weighted logistic fit of targets ``t`` on ``z``, from (a, b)."""

    def loss(a: float, b: float) -> float:
        u = a * z + b
        return float(np.dot(c, np.logaddexp(0, u) - t * u))

    current = loss(a, b)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(a * z + b, -700, 700)))
        w = c * np.maximum(p * (1 - p), 1e-12)
        g = np.array([np.dot(c * (p - t), z), np.dot(c, p - t)])
        h = np.array([[np.dot(w, z * z), np.dot(w, z)], [np.dot(w, z), w.sum()]]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(h, g)
        scale = 1.0
        trial = loss(a - step[0], b - step[1])
        while scale > 1e-4 and not trial <= current:
            scale /= 2  # a full Newton step can overshoot far from the optimum
            trial = loss(a - scale * step[0], b - scale * step[1])
        a, b = a - scale * step[0], b - scale * step[1]
        previous, current = current, trial
        if previous - current < 1e-9 * max(1.0, abs(current)):
            break
    return a, b
