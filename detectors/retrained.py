"""Retrained trees: a gradient-boosted model trained again and again on recent settled
decisions, scoring in shadow beside the online logistic regression.

An online logistic regression adapts continuously but ranks the top of the queue less well
than trees trained on the same information (issue: AP 0.52 online against 0.71 for an offline
random forest on the data kept aside). So :class:`RetrainedTrees` trains LightGBM on the
decision-time feature snapshots of ``FraudModels``' ring whose outcome has settled (a fraud
label, or maturity as legit) over a recent window of event time, on a schedule in event time:
every ``every_ms``, once ``min_positives`` frauds have settled in the window.

Why LightGBM: histogram gradient boosting in C++, deterministic with a fixed seed and one
thread, and its ``predict`` takes a whole numpy batch; scikit-learn's forests train several
times slower at this size, and we would not write boosting ourselves.

Training never blocks decisions in a worker (``background=True``: a thread trains on a copy
of the window and the new model swaps in when done; LightGBM releases the GIL while it
trains). A replay trains in line at the scheduled event time, so it gives the same result
every time.
"""

from __future__ import annotations

import threading
import time

import numpy as np

DAY_MS = 86_400_000

PARAMS = {
    "objective": "binary", "learning_rate": 0.05, "num_leaves": 31, "min_child_samples": 40,
    "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0,
    "num_threads": 1, "deterministic": True, "force_row_wise": True, "verbose": -1,
}


class RetrainedTrees:
    """The challenger: ``due(now)``, ``train(X, y, now)``, ``score(X)`` (None until trained)."""

    def __init__(self, every_ms: int = DAY_MS, window_ms: int = 21 * DAY_MS, rounds: int = 200,
                 min_positives: int = 50, negative_rate: float = 0.25, background: bool = False, seed: int = 0):
        self.every_ms, self.window_ms, self.rounds = int(every_ms), int(window_ms), int(rounds)
        self.min_positives, self.negative_rate = int(min_positives), float(negative_rate)
        self.background, self.seed = background, seed
        self.booster = None
        self.version = "gbdt-untrained"
        self.next_at_ms: int | None = None
        self.trainings = 0
        self.train_seconds = 0.0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def due(self, now_ms: int) -> bool:
        if self._thread is not None and self._thread.is_alive():
            return False
        if self.next_at_ms is None:
            self.next_at_ms = now_ms + self.every_ms
            return False
        return now_ms >= self.next_at_ms

    def train(self, X: np.ndarray, y: np.ndarray, now_ms: int) -> bool:
        """Train on settled rows (decision-time features ``X``, outcomes ``y``); False when too
        few frauds settled yet (the next attempt comes at the next scheduled time)."""
        self.next_at_ms = now_ms + self.every_ms
        if int(y.sum()) < self.min_positives:
            return False
        rng = np.random.default_rng(self.seed + self.trainings)
        keep = (y == 1) | (rng.random(len(y)) < self.negative_rate)
        X, y = np.ascontiguousarray(X[keep]), y[keep]
        if self.background:
            self._thread = threading.Thread(target=self._fit, args=(X, y, now_ms), daemon=True,
                                            name="retrain-trees")
            self._thread.start()
        else:
            self._fit(X, y, now_ms)
        return True

    def _fit(self, X: np.ndarray, y: np.ndarray, now_ms: int) -> None:
        import lightgbm

        t0 = time.perf_counter()
        data = lightgbm.Dataset(X, label=y, params={"verbose": -1})
        booster = lightgbm.train({**PARAMS, "seed": self.seed}, data, num_boost_round=self.rounds)
        with self._lock:
            self.booster = booster
            self.trainings += 1
            self.version = f"gbdt-{self.trainings}-day{now_ms // DAY_MS}"
            self.train_seconds += time.perf_counter() - t0

    def score(self, X: np.ndarray) -> np.ndarray | None:
        """Fraud probability of each row; None before the first model. The model learned from
        one legit transaction in ``1 / negative_rate``: its odds are scaled back by that rate,
        so that the probability is one on the traffic as it is."""
        booster = self.booster
        if booster is None or len(X) == 0:
            return None
        p = booster.predict(X, num_threads=1)
        return (p * self.negative_rate / (p * self.negative_rate + (1.0 - p))).astype(np.float32)

    def state(self) -> dict:
        """What a checkpoint keeps: the model as LightGBM's text, and the schedule."""
        self.wait()
        return {"model": self.booster.model_to_string() if self.booster is not None else None,
                "version": self.version, "next_at_ms": self.next_at_ms, "trainings": self.trainings}

    def load(self, state: dict) -> None:
        import lightgbm

        self.booster = lightgbm.Booster(model_str=state["model"]) if state["model"] else None
        self.version, self.next_at_ms, self.trainings = state["version"], state["next_at_ms"], state["trainings"]

    def wait(self) -> None:
        """Until a background training finishes (tests, shutdown)."""
        if self._thread is not None:
            self._thread.join()


class ChallengerLifecycle:
    """``FraudModels``' side of the challenger: hand it the ring's settled decisions when its
    training is due, and compare it with the logistic regression first (promotion). Uses the
    ring of ``detectors.fraud`` (``_X``, ``_time``, ``_score``, ``_cscore``, ``_entity``,
    ``_status``) and ``challenger``, ``promote_margin``, ``promoted``, ``compare_ms``,
    ``comparisons``, ``min_positives``."""

    def _retrain_if_due(self) -> None:
        """Hand the challenger the settled decisions of its window when its time has come."""
        from riskstream.detectors.fraud import LEARNED_NEG, LEARNED_POS  # (fraud imports this module)

        c = self.challenger
        if c is None or not c.due(self._clock()):
            return
        now = self._clock()
        used = self._ring_written()
        status, t = self._status[:used], self._time[:used]
        settled = (status == LEARNED_POS) | (status == LEARNED_NEG)
        if self.promote_margin is not None and not self.promoted:
            self._compare(np.flatnonzero(settled & (t >= now - self.compare_ms) & ~np.isnan(self._cscore[:used])
                                         & ~np.isnan(self._score[:used])), now)
        settled &= t >= now - c.window_ms
        c.train(self._X[:used][settled], (status[settled] == LEARNED_POS).astype(np.int8), now)

    def _compare(self, rows: np.ndarray, now: int) -> None:
        """Champion (the logistic regression) against the challenger on the same settled
        decisions; the challenger is promoted when it leads on both AP and CP@100."""
        from riskstream.detectors.evaluate import average_precision, card_precision_at_k
        from riskstream.detectors.fraud import LEARNED_POS

        y = (self._status[rows] == LEARNED_POS).astype(np.int8)
        if y.sum() < self.min_positives or y.all():
            return
        day, card = self._time[rows] // DAY_MS, self._entity[rows]
        result = {"at_ms": now, "decisions": int(len(y)), "frauds": int(y.sum())}
        for name, score in (("champion", self._score[rows]), ("challenger", self._cscore[rows])):
            result[name] = {"average_precision": average_precision(y, score),
                            "card_precision_at_100": card_precision_at_k(day, card, score, y, k=100)}
        c, l = result["challenger"], result["champion"]
        result["promoted"] = all(c[m] >= l[m] + self.promote_margin for m in c)
        self.comparisons.append(result)
        self.promoted = result["promoted"]

