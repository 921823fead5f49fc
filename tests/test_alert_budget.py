"""Thresholds from a review capacity (streams.alert_budget): the day's model-driven reviews
and step-ups stay within their shares, the capacity is used, and rule actions stand."""

from __future__ import annotations

import numpy as np

from riskstream.streams.alert_budget import DAY_MS, AlertBudget


def _day_of_decisions(budget: AlertBudget, rng, day: int, n: int, batch: int, drift: float = 0.0):
    shares = {"review": 0, "step_up": 0, "rule_review_kept": 0}
    for start in range(0, n, batch):
        score = np.clip(rng.beta(0.6, 12, batch) + drift, 0, 1).astype(np.float32)
        t = np.full(batch, day * DAY_MS + int(start / n * DAY_MS), np.int64)
        step_up_at, review_at = budget.thresholds(0.35, 0.60)
        rule_review = rng.random(batch) < 0.001
        review = rule_review | (score >= review_at)
        step_up = (score >= step_up_at) & ~review
        budget.keep_within(t, score, review, step_up, rule_review, np.zeros(batch, bool))
        budget.observe(score)
        shares["review"] += int(review.sum())
        shares["step_up"] += int(step_up.sum())
        shares["rule_review_kept"] += int((review & rule_review).sum()) - int(rule_review.sum())
    return {k: v / n if k != "rule_review_kept" else v for k, v in shares.items()}


def test_a_day_of_decisions_stays_within_its_budget_and_uses_it():
    rng = np.random.default_rng(1)
    budget = AlertBudget(review_share=0.005, step_up_share=0.02)
    days = [_day_of_decisions(budget, rng, d, 40_000, 400) for d in range(3)]
    # Traffic turns riskier on the last day: thresholds follow, the budget still holds.
    days.append(_day_of_decisions(budget, rng, 3, 40_000, 400, drift=0.05))
    for d, used in enumerate(days):
        assert used["review"] <= 0.005 + 1e-9 and used["step_up"] <= 0.02 + 1e-9, (d, used)
        assert used["rule_review_kept"] == 0, "a rule's review is never downgraded"
    for used in days[1:]:
        assert used["review"] >= 0.004 and used["step_up"] >= 0.016, used  # the capacity is used
    fixed = AlertBudget(None, None)
    assert fixed.thresholds(0.35, 0.60) == (0.35, 0.60)


def test_a_model_still_warming_up_sends_nothing_to_review_on_budget():
    budget = AlertBudget(review_share=0.005, step_up_share=0.02)
    budget.observe(np.zeros(10_000, np.float32))  # the model has no say yet: probability 0 everywhere
    step_up_at, review_at = budget.thresholds(0.35, 0.60)
    assert step_up_at > 0 and review_at > 0
