"""Quality of the loan decisions, from the decisions table and the outcomes that came back.

Every decision's PD was given before its outcome was known (the model learns an outcome only
once its time has come), so the figures over labelled applications are prequential:

* ROC AUC and the Brier score of the PD against the outcome (default = 1, repaid = 0);
* a calibration table: deciles of PD against the observed default rate, and the gap (judged
  where the observed rate's standard error is at most a point);
* the approval rate (of every decision) and the default rate among approved applications
  whose outcome is known; also the approval rate the PD bands of ``policy`` would give.

>>> import numpy as np
>>> table = calibration_table(np.linspace(0.01, 0.5, 100), np.r_[np.zeros(80), np.ones(20)], bins=4)
>>> [(row["n"], round(row["mean_pd"], 3)) for row in table][:2]
[(25, 0.071), (25, 0.194)]
"""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import orjson

from riskstream.detectors.evaluate import calibration_table, roc_auc

def credit_sql(start: date, end_inclusive: date) -> str:
    end = end_inclusive + timedelta(days=1)
    return f"""
SELECT d.event_id AS event_id, d.score AS pd, d.decision AS decision, d.model_version AS model_version,
       l.event_id != '' AS labelled, ifNull(l.is_positive, 0) AS defaulted
FROM (
    SELECT event_id, score, decision, model_version FROM decisions FINAL
    WHERE stream = 'loan_applications'
      AND event_time >= toDateTime64('{start.isoformat()} 00:00:00', 3, 'UTC')
      AND event_time < toDateTime64('{end.isoformat()} 00:00:00', 3, 'UTC')
) AS d
LEFT JOIN (
    SELECT event_id, max(is_positive) AS is_positive FROM labels FINAL
    WHERE stream = 'loan_applications' GROUP BY event_id
) AS l ON d.event_id = l.event_id
SETTINGS join_use_nulls = 0
"""


def credit_quality(pd: np.ndarray, decision: np.ndarray, labelled: np.ndarray, defaulted: np.ndarray,
                   refer_pd: float | None = None) -> dict:
    """The figures of the module docstring over arrays (one entry per decision)."""
    n = len(pd)
    out: dict = {"decisions": n, "labelled": int(labelled.sum()), "defaults": int(defaulted[labelled].sum())}
    if not n:
        return out
    approved = decision == "approve"
    out["approval_rate"] = float(approved.mean())
    out["decision_counts"] = {str(k): int(v) for k, v in zip(*np.unique(decision, return_counts=True))}
    if refer_pd is not None:
        out["approval_rate_at_refer_pd"] = float((pd < refer_pd).mean())
    known_approved = approved & labelled
    out["approved_with_outcome"] = int(known_approved.sum())
    out["default_rate_approved"] = float(defaulted[known_approved].mean()) if known_approved.any() else None
    y, p = defaulted[labelled].astype(np.int8), pd[labelled]
    if len(y) and 0 < y.sum() < len(y):
        out["roc_auc"] = roc_auc(y, p)
    if len(y):
        out["brier"] = float(np.mean((p - y) ** 2))
        out["calibration"] = calibration_table(p, y)
        out["max_calibration_gap"] = max((abs(row["gap"]) for row in out["calibration"] if row["judged"]),
                                         default=None)
    return out


def evaluate_credit(settings, start: date, end_inclusive: date, refer_pd: float | None = None) -> dict:
    from riskstream.sinks.clickhouse import run_query

    raw = run_query(settings, credit_sql(start, end_inclusive), "json")
    rows = [orjson.loads(line) for line in raw.splitlines() if line.strip()]
    n = len(rows)
    result = credit_quality(
        np.fromiter((float(r["pd"]) for r in rows), np.float64, n),
        np.array([r["decision"] for r in rows], dtype=object),
        np.fromiter((bool(r["labelled"]) for r in rows), bool, n),
        np.fromiter((int(r["defaulted"]) for r in rows), np.int8, n), refer_pd)
    result.update({"from": start.isoformat(), "to": end_inclusive.isoformat(),
                   "model_versions": len({r["model_version"] for r in rows})})
    return result
