"""Settled outcomes of the fraud model: the quality history and the drift signals.

A mixin of :class:`~riskstream.detectors.fraud.FraudModels`, kept apart so each reads in one
sitting. It works on the host's quality ring (``_q_time``, ``_q_score``, ``_q_y``,
``_q_entity``, ``_q_key``, ``_q_n``, ``quality_capacity``; ``_q_at`` maps a decision's ring
slot to its place there), its ADWIN detectors (``_adwin``) and pending alerts (``_alerts``),
all created and checkpointed by the host.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from riskstream.detectors.evaluate import average_precision, card_precision_at_k, roc_auc
from riskstream.schemas.events import DAY_MS


class OutcomeMonitoring:
    """Quality over settled decisions, and drift of their errors."""

    def feed_drift(self, signal: str, errors: np.ndarray, meaning: str) -> None:
        """Feed settled errors to the signal's ADWIN, one alert per detected change.

        River's ``ADWIN.update`` wraps the Rust window in Python checks: 240k values took 57 ms
        through it and 20 ms here (~0.1 µs a transaction of an offline replay). The window's
        own update is called directly, and the wrapper's reset (made on the value after a
        detection) happens at the same point, so the detections are the public API's (a test
        compares them)."""
        detector = self._adwin[signal]
        values = errors.tolist()
        start = 0
        while start < len(values):
            if detector.drift_detected:
                detector._reset()
            update = detector._helper.update
            for i, e in enumerate(values[start:], start):
                if update(e):
                    break
            else:
                return
            detector._drift_detected = True
            self._alerts.append({
                "detected_at": (self.newest_event_ms or 0) / 1000.0,
                "model_version": self.version,
                "signal": signal,
                "mean_error_now": float(detector.estimation),
                "window": int(detector.width),
                "meaning": meaning,
            })
            start = i + 1

    def _record_quality(self, slots: np.ndarray, y: np.ndarray) -> None:
        n = len(slots)
        q = (self._q_n + np.arange(n)) % self.quality_capacity
        self._q_time[q] = self._time[slots]
        self._q_score[q] = self._score[slots]
        self._q_y[q] = y
        self._q_entity[q] = self._entity[slots]
        self._q_key[q] = self._key[slots]
        self._q_at[slots] = q
        self._q_n += n

    def _drop_quality(self, slots: np.ndarray) -> None:
        """Take the negatives these corrected decisions settled as out of the quality windows.

        By their recorded position: an ``np.isin`` over the 500k-entry quality ring per label
        call with a correction was 4% of an offline replay. A slot whose position is unknown
        (a checkpoint from before positions were kept) is searched for by its id as before."""
        n = min(self._q_n, self.quality_capacity)
        q = self._q_at[slots]
        known = q >= 0
        q, keys = q[known], self._key[slots[known]]
        # The quality ring may have wrapped since: only an entry still holding this decision.
        mine = (self._q_key[q] == keys) & (self._q_y[q] == 0)
        self._q_time[q[mine]] = -1  # excluded from every window
        if not known.all():
            stale = np.isin(self._q_key[:n], self._key[slots[~known]]) & (self._q_y[:n] == 0)
            self._q_time[:n][stale] = -1

    # ----- quality and drift -----------------------------------------------------------------
    def quality(self, measured_at: float | None = None, windows_days: Sequence[int] = (7, 28)) -> list[dict]:
        """Rolling ROC AUC, average precision and Card Precision@100 (per day, averaged) over
        settled decisions, as rows for the ``model_quality`` table.

        Only decisions older than the maturity horizon are used: younger ones have their
        positives but not yet their negatives, which would inflate every metric. Window
        ``"7d"`` means the 7 days of decisions before that horizon.
        """
        if self.newest_event_ms is None or self._q_n == 0:
            return []
        n = min(self._q_n, self.quality_capacity)
        cutoff = self._clock() - self.maturity_ms
        measured_at = time.time() if measured_at is None else measured_at
        rows = []
        for days in windows_days:
            t = self._q_time[:n]
            sel = (t >= 0) & (t <= cutoff) & (t > cutoff - days * DAY_MS) & ~np.isnan(self._q_score[:n])
            y, s = self._q_y[:n][sel], self._q_score[:n][sel]
            if len(y) == 0 or y.min() == y.max():  # needs both classes
                continue
            values = {
                "roc_auc": roc_auc(y, s),
                "average_precision": average_precision(y, s),
                "card_precision_at_100": card_precision_at_k(t[sel] // DAY_MS, self._q_entity[:n][sel], s, y, k=100),
            }
            for metric, value in values.items():
                rows.append({"measured_at": float(measured_at), "model_version": self.version, "metric": metric,
                             "window": f"{days}d", "value": float(value), "n_labels": int(sel.sum())})
        return rows

    def settled(self) -> dict[str, np.ndarray]:
        """The quality history: settled decisions in the order they settled, with their
        decision-time ``score``, ``label``, hashed event id (``key``) and event time
        (``event_time``, -1 for a negative a later chargeback took out of every window)."""
        n = min(self._q_n, self.quality_capacity)
        return {"event_time": self._q_time[:n], "score": self._q_score[:n], "label": self._q_y[:n],
                "key": self._q_key[:n]}

    def drift_window(self, signal: str):
        """The ADWIN window of a drift signal (``fraud_score`` or ``legit_score``)."""
        return self._adwin[signal]

    def drift_alerts(self) -> list[dict]:
        """Drift events detected since the last call."""
        alerts, self._alerts = self._alerts, []
        return alerts
