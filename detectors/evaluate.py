"""Fraud-model quality: metric functions (pure numpy) and ``riskstream evaluate``.

The metrics are the ones fraud teams report:

* ``roc_auc``: the chance a random fraud scores above a random legit transaction (ties
  count half), i.e. the normalised Mann-Whitney U; equal to scikit-learn's ``roc_auc_score``.
* ``average_precision``: precision averaged at each recall step, thresholds at distinct
  scores; equal to scikit-learn's ``average_precision_score``.
* ``card_precision_at_k``: what an investigation team of fixed size sees. Per day, take the
  ``k`` cards with the highest (max) score that day; the share of them that had a fraud that
  day; averaged over days. Divided by ``k`` even on a day with fewer cards, as in the
  published definition. Ties at the k-th score are broken by card order.

>>> import numpy as np
>>> y = np.array([0, 0, 1, 1]); s = np.array([0.1, 0.4, 0.35, 0.8])
>>> roc_auc(y, s), round(average_precision(y, s), 4)
(0.75, 0.8333)
>>> card_precision_at_k(np.array([0, 0, 1]), np.array(["a", "b", "a"]), np.array([0.9, 0.2, 0.5]),
...                     np.array([1, 0, 0]), k=1)
0.5

``riskstream evaluate --from 2024-01-01 --to 2024-01-31`` reads the decisions of those days
(inclusive) joined to their labels from ClickHouse and prints the three metrics.
"""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import orjson


def _check(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape} vs {s.shape}")
    return y, s


def _average_ranks(s: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    starts = np.r_[True, sorted_s[1:] != sorted_s[:-1]]
    group = np.cumsum(starts) - 1
    first = np.nonzero(starts)[0]
    last = np.r_[first[1:], len(s)] - 1
    avg = (first + last) / 2.0 + 1.0
    ranks = np.empty(len(s), np.float64)
    ranks[order] = avg[group]
    return ranks


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC; NaN when only one class is present."""
    y, s = _check(y_true, score)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(y_true: np.ndarray, score: np.ndarray) -> float:
    """Average precision (area under the step precision-recall curve); NaN without positives."""
    y, s = _check(y_true, score)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    # One threshold per distinct score: the last index of each run of equal scores.
    ends = np.r_[np.nonzero(s_sorted[1:] != s_sorted[:-1])[0], len(s) - 1]
    tp = np.cumsum(y_sorted)[ends]
    precision = tp / (ends + 1.0)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def card_precision_at_k(day: np.ndarray, card: np.ndarray, score: np.ndarray,
                        is_fraud_day: np.ndarray, k: int = 100) -> float:
    """Mean over days of (frauded cards among the day's top-k cards by max score) / k.

    Inputs are per transaction: its day (any integer day number), card id, score, and whether
    it was a fraud; a card counts as frauded on a day when any of its transactions was.
    """
    day = np.asarray(day).ravel()
    if len(day) == 0:
        return float("nan")
    card_codes = np.unique(np.asarray(card).ravel(), return_inverse=True)[1]
    score = np.asarray(score, dtype=np.float64).ravel()
    fraud = np.asarray(is_fraud_day).astype(np.int8).ravel()
    days, day_codes = np.unique(day, return_inverse=True)
    # Collapse to one row per (day, card): max score, any fraud.
    pair = day_codes.astype(np.int64) * (int(card_codes.max()) + 1) + card_codes
    pairs, pair_idx = np.unique(pair, return_inverse=True)
    max_score = np.full(len(pairs), -np.inf)
    np.maximum.at(max_score, pair_idx, score)
    any_fraud = np.zeros(len(pairs), np.int8)
    np.maximum.at(any_fraud, pair_idx, fraud)
    pair_day = pairs // (int(card_codes.max()) + 1)
    # Sort by day, then score descending; the first k of each day are its top k.
    order = np.lexsort((-max_score, pair_day))
    pair_day, any_fraud = pair_day[order], any_fraud[order]
    day_start = np.searchsorted(pair_day, np.arange(len(days)))
    rank = np.arange(len(pair_day)) - day_start[pair_day]
    top = rank < k
    hits = np.bincount(pair_day[top], weights=any_fraud[top], minlength=len(days))
    return float(np.mean(hits / k))


# A bin's calibration gap is judged only where its observed rate can be known to within a
# point (the binomial standard error at the bin's mean probability): 100 cases at 30% give
# +/-4.6 points, so a 2-point gap there is noise.
MAX_RATE_SE = 0.01
# Fraud probabilities cluster near 0: bins by value, not equal counts, show the top apart.
FRAUD_BINS = (0.0, 0.001, 0.005, 0.01, 0.05, 0.1, 0.2, 0.35, 0.6, 0.9, 1.0)


def calibration_table(p: np.ndarray, y: np.ndarray, bins: int = 10,
                      edges: tuple[float, ...] | None = None) -> list[dict]:
    """Predicted probability against the observed rate, lowest first: ``bins`` equal-count
    bins, or bins between ``edges``. Per bin: cases, range, mean probability, observed rate,
    gap, and whether the gap can be judged (``MAX_RATE_SE``). Keys keep the credit names
    (``mean_pd``, ``default_rate``)."""
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if edges is None:
        parts = np.array_split(np.argsort(p, kind="stable"), bins)
    else:
        which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 2)
        parts = [np.flatnonzero(which == b) for b in range(len(edges) - 1)]
    out = []
    for part in parts:
        if not len(part):
            continue
        mean_p, observed = float(p[part].mean()), float(y[part].mean())
        # The rate's standard error if the probabilities were right (the observed rate's own is 0 at 0%).
        se = (mean_p * (1 - mean_p) / len(part)) ** 0.5
        out.append({"n": int(len(part)), "pd_from": float(p[part].min()), "pd_to": float(p[part].max()),
                    "mean_pd": mean_p, "default_rate": observed, "gap": observed - mean_p, "rate_se": se,
                    "judged": bool(se <= MAX_RATE_SE)})
    return out


def at_budget(day: np.ndarray, score: np.ndarray, y: np.ndarray, share: float) -> dict:
    """Each day, the top ``share`` of its transactions by score flagged (what a review queue
    of that size would see): precision and recall of the flagged over the whole period."""
    flagged = np.zeros(len(score), bool)
    for d in np.unique(day):
        rows = np.flatnonzero(day == d)
        k = int(share * len(rows))
        if k:
            flagged[rows[np.argsort(-score[rows], kind="stable")[:k]]] = True
    hits = int(np.count_nonzero(flagged & (y == 1)))
    return {"share": share, "flagged": int(flagged.sum()),
            "precision": hits / flagged.sum() if flagged.any() else float("nan"),
            "recall": hits / y.sum() if y.any() else float("nan")}


def evaluation_sql(start: date, end_inclusive: date) -> str:
    # Labels folded to one row per event (any positive label makes it a fraud); decisions
    # without a label are legit, which is how delayed chargebacks work once labels matured.
    end = end_inclusive + timedelta(days=1)
    return f"""
SELECT d.event_id AS event_id, d.entity_id AS card, toRelativeDayNum(d.event_time) AS day,
       d.score AS score, d.model_version AS model_version, d.challenger_score AS challenger_score,
       d.challenger_version AS challenger_version,
       ifNull(l.is_positive, 0) AS is_fraud, l.event_id != '' AS labelled
FROM (
    SELECT event_id, entity_id, event_time, score, model_version, challenger_score, challenger_version
    FROM decisions FINAL
    WHERE stream = 'transactions'
      AND event_time >= toDateTime64('{start.isoformat()} 00:00:00', 3, 'UTC')
      AND event_time < toDateTime64('{end.isoformat()} 00:00:00', 3, 'UTC')
) AS d
LEFT JOIN (
    SELECT event_id, max(is_positive) AS is_positive, max(label_time) AS label_time
    FROM labels FINAL GROUP BY event_id
) AS l ON d.event_id = l.event_id
SETTINGS join_use_nulls = 0
"""


def several_models_note(cold: dict) -> str:
    """What to say when models decided only part of the traffic once the first took over
    (several workers: each model proves itself on its own partitions' cards); "" otherwise."""
    share = cold.get("model_share_since", 1.0)
    if share >= 0.95:
        return ""
    return (f"a model decided from day {cold['model_from_day']}, {share:.0%} of the transactions since "
            "(each worker's model proves itself on its own partitions' cards)")


def evaluate(settings, start: date, end_inclusive: date, budgets: tuple[float, float] = (0.005, 0.02)) -> dict:
    """Metrics for the decisions of [start, end_inclusive] against their labels; per model
    also precision and recall at the review and step-up ``budgets`` (shares of a day's
    transactions) and a calibration table."""
    from riskstream.sinks.clickhouse import run_query

    raw = run_query(settings, evaluation_sql(start, end_inclusive), "json")
    rows = [orjson.loads(line) for line in raw.splitlines() if line.strip()]
    n = len(rows)
    result: dict = {"from": start.isoformat(), "to": end_inclusive.isoformat(), "decisions": n}
    if n == 0:
        return result
    y = np.fromiter((int(r["is_fraud"]) for r in rows), np.int8, n)
    s = np.fromiter((float(r["score"]) for r in rows), np.float64, n)
    day = np.fromiter((int(r["day"]) for r in rows), np.int64, n)
    card = np.array([r["card"] for r in rows], dtype=object)
    result.update({
        "labelled": int(sum(bool(r["labelled"]) for r in rows)),
        "frauds": int(y.sum()),
        "days": int(len(np.unique(day))),
        "model_versions": len({r["model_version"] for r in rows}),
        "roc_auc": roc_auc(y, s),
        "average_precision": average_precision(y, s),
        "card_precision_at_100": card_precision_at_k(day, card, s, y, k=100),
    })
    # Per model, on the rows each had a say in: the champion once warmed up (before, the rules
    # decided alone: the cold start), the retrained trees in shadow once trained.
    cold = np.array([r["model_version"].startswith(("fraud-warming-up", "fraud-proving", "fraud-untrained", "none"))
                     for r in rows], dtype=bool)
    shadow = np.fromiter((np.nan if r["challenger_score"] is None else float(r["challenger_score"]) for r in rows),
                         np.float64, n)  # NaN comes back as null
    trained = ~np.isnan(shadow)
    result["cold_start"] = {"decisions": int(cold.sum()), "days": int(len(np.unique(day[cold])))}
    if (~cold).any():
        # With several workers each model warms up on its own partitions' cards: the first day
        # any model decided, and the share of the traffic from then on that a model decided.
        since = day >= day[~cold].min()
        result["cold_start"].update({"model_from_day": int(day[~cold].min() - day.min()),
                                     "model_share_since": float((~cold & since).sum() / since.sum())})
    result["cold_start"]["several_models_note"] = several_models_note(result["cold_start"])
    # The model that decides and the one in shadow (detectors.champion): the online logistic
    # regression and the retrained trees trade places when the trees are promoted.
    trees_decide = np.array([r["model_version"].startswith("gbdt-") for r in rows], dtype=bool)
    models = {}
    for name, score, rows_of in (("deciding model, after warm-up", s, ~cold),
                                 ("  of which the online logistic regression", s, ~cold & ~trees_decide),
                                 ("  of which retrained trees", s, trees_decide),
                                 ("deciding model, where a shadow scored", s, trained),
                                 ("shadow (the model not deciding)", shadow, trained)):
        if name.startswith("  ") and not trees_decide.any():  # one model decided: no split
            continue
        if rows_of.any() and y[rows_of].any() and not y[rows_of].all():
            sc, yy, dd = score[rows_of], y[rows_of], day[rows_of]
            models[name] = {"decisions": int(rows_of.sum()), "frauds": int(yy.sum()),
                            "roc_auc": roc_auc(yy, sc), "average_precision": average_precision(yy, sc),
                            "card_precision_at_100": card_precision_at_k(dd, card[rows_of], sc, yy, k=100),
                            "review_budget": at_budget(dd, sc, yy, budgets[0]),
                            "step_up_budget": at_budget(dd, sc, yy, budgets[1]),
                            "calibration": calibration_table(sc, yy, edges=FRAUD_BINS),
                            "_scores": (sc, yy)}
    result["models"] = models
    return result


