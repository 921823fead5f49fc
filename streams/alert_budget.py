"""Thresholds from a review capacity: "review at most 0.5% of a day's transactions, step up
at most 2%" instead of fixed score thresholds.

A fraud team sizes its review queue and its customers' friction, not a probability. So with
``review_budget`` / ``step_up_budget`` set, the model's review and step-up thresholds are the
score quantiles that give those shares on recent traffic (the last ``window`` scores,
re-read every ``every`` scores), and a day's model-driven reviews and step-ups are kept within
the shares of the transactions seen so far that day (paced: a morning cannot spend the
evening's capacity): past it, the lowest-scored of a batch's model-driven reviews become step-ups, and
step-ups approvals. Rule actions stand whatever the budget (a rule is policy); they count in
the day's use. Declines keep their fixed threshold.
"""

from __future__ import annotations

import numpy as np

DAY_MS = 86_400_000
MIN_SCORE = 1e-6  # the lowest threshold a budget sets: the model must have an opinion


class AlertBudget:
    def __init__(self, review_share: float | None, step_up_share: float | None, window: int = 200_000,
                 every: int = 5_000, warm: int = 5_000):
        self.shares = {"review": review_share or 0.0, "step_up": step_up_share or 0.0}
        self.recent = np.zeros(window, np.float32)
        self.filled = self.head = self.since = 0
        self.every, self.warm = every, warm
        self.cut: dict[str, float] | None = None  # score thresholds from recent traffic
        self.days: dict[int, dict[str, int]] = {}  # event day -> transactions seen, reviews, step-ups

    def thresholds(self, step_up_score: float, review_score: float) -> tuple[float, float]:
        """(step-up, review) score thresholds: from the budget once enough traffic was seen."""
        if self.cut is None:
            return step_up_score, review_score
        return (self.cut["step_up"] if self.shares["step_up"] else step_up_score,
                self.cut["review"] if self.shares["review"] else review_score)

    def observe(self, score: np.ndarray) -> None:
        n = min(len(score), len(self.recent))
        idx = (self.head + np.arange(n)) % len(self.recent)
        self.recent[idx] = score[-n:]
        self.head = int((self.head + n) % len(self.recent))
        self.filled = min(len(self.recent), self.filled + n)
        self.since += n
        if self.filled >= self.warm and (self.cut is None or self.since >= self.every):
            scores = self.recent[:self.filled]
            review = self.shares["review"]
            # Never at 0: while the model warms up its probability is 0 for every transaction,
            # and a quantile of zeros would send arbitrary transactions to review.
            self.cut = {"review": max(float(np.quantile(scores, 1 - review)), MIN_SCORE) if review else 1.0,
                        "step_up": max(float(np.quantile(scores, 1 - review - self.shares["step_up"])), MIN_SCORE)}
            self.since = 0

    def keep_within(self, event_time_ms: np.ndarray, score: np.ndarray, review: np.ndarray, step_up: np.ndarray,
                    rule_review: np.ndarray, rule_step_up: np.ndarray) -> None:
        """Downgrade, in place, the model-driven reviews and step-ups past their day's budget
        (each row counts in the day of its event time)."""
        days = event_time_ms // DAY_MS
        for day in np.unique(days).tolist():
            rows = np.flatnonzero(days == day)
            ledger = self.days.setdefault(day, {"seen": 0, "review": 0, "step_up": 0})
            ledger["seen"] += len(rows)
            for kind, mask, rule in (("review", review, rule_review), ("step_up", step_up, rule_step_up)):
                share = self.shares[kind]
                if not share:
                    continue
                model_only = rows[mask[rows] & ~rule[rows]]
                room = max(0, int(share * ledger["seen"]) - ledger[kind] - int(np.count_nonzero(mask[rows] & rule[rows])))
                if len(model_only) > room:
                    over = model_only[np.argsort(score[model_only], kind="stable")][:len(model_only) - room]
                    mask[over] = False
                    if kind == "review":
                        step_up[over] = True  # a review past the budget is stepped up instead
                ledger[kind] += int(np.count_nonzero(mask[rows]))
        while len(self.days) > 3:  # late events of older days count against nothing
            del self.days[min(self.days)]
