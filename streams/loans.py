"""Loan applications: policy rules, then the PD model, then the decision bands and the limit.

One credit policy file (``rules.credit_policy``; ``RISKSTREAM_CREDIT_FILE``, the built-in
``rules/credit.yaml`` by default) holds all of it. For a batch of applications:

1. the lender's field names are mapped to the amounts the engine knows;
2. the policy rules run over the batch as columns (the rule kernel of the fraud rules): a
   ``decline`` hit declines, an ``allow`` hit approves whatever the PD, a ``review`` hit refers;
3. the PD model (``detectors.credit.PdModel``) gives each application its probability of
   default and the features that raise it;
4. the bands decide the rest: approve under ``refer_pd``, refer up to ``decline_pd``, decline
   from there; the amount offered shrinks with the PD (``CreditPolicy.granted``).

The decision row carries the PD as ``score``, the amount requested and the amount granted,
and reasons a person can read: the rules that hit, the PD against its band, the features that
raise it. Outcomes (``default`` / ``repaid`` on ``labels``) teach the model on the features the
application had when it was decided.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import orjson

from riskstream.detectors.credit import PdModel
from riskstream.rules.compiler import compile_rule_set
from riskstream.rules.credit_policy import RATIOS, CreditPolicy, load_credit_policy_file
from riskstream.schemas.events import LOAN_KNOWN, DeadLetter
from riskstream.settings import Settings
from riskstream.streams.early_warning import Observation
from riskstream.streams.ledger import LedgerOp, LineState, cents, event_row
from riskstream.streams.outputs import Outputs
from riskstream.streams.redis_outage import RedisUnavailable


class LoanProcessor:
    def __init__(self, settings: Settings, policy: CreditPolicy | None = None, ledger=None, warning=None):
        self.policy = policy or load_credit_policy_file(settings.credit_file)
        self.ledger = ledger  # streams.ledger: an approval opens (or resets) the customer's credit line
        self.warning = warning  # streams.early_warning: a customer's PD rising between applications
        self.outage = settings.redis_outage_policy.get("loan_applications", "closed")
        self.model = PdModel(**self.policy.model)
        self.compiled = _compiled(self.policy)

    def set_policy(self, policy: CreditPolicy) -> None:
        """A new policy without a restart (published on the control topic): its rules are
        compiled first, then rules, bands, limit and field names swap in together. The model
        keeps what it learned and takes the new settings from its next fit."""
        compiled = _compiled(policy)
        for name, value in policy.model.items():
            setattr(self.model, name, value)
        self.policy, self.compiled = policy, compiled

    # ----- the processor contract ------------------------------------------------------------
    def process(self, rows: list[dict[str, Any]], dead: list[DeadLetter], now_ms: int | None = None) -> Outputs:
        rows = [self._mapped(r) for r in rows]
        out = Outputs("loan_applications", rows={"loan_applications": [_stored(r) for r in rows]}, dead=dead)
        if not rows:
            return out
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        features = [self.model.features(row) for row in rows]  # once: scored, remembered, ratios for the rules
        pd, model_reasons = self.model.score_features(features, observe=True)
        outcome = self.compiled.evaluate(self._columns(rows, features)) if self.compiled is not None else None
        version, model_version = self.policy.version, self.model.version
        for i, (row, p) in enumerate(zip(rows, pd.tolist())):
            hits = outcome.reasons(i) if outcome is not None else []
            acting = {r.action for r in hits if not r.shadow}
            decision = self.policy.decide(p)
            if "decline" in acting:
                decision = "decline"
            elif "allow" in acting:
                decision = "approve"
            elif "review" in acting and decision == "approve":
                decision = "review"
            granted = 0.0 if decision == "decline" else self.policy.granted(p, row["amount"], row["income"])
            reasons = [("shadow:" if r.shadow else "") + f"{r.code}: {r.text}" for r in hits]
            reasons.append(self._band_reason(p))
            reasons += model_reasons[i]
            out.decisions.append({
                "event_id": row["application_id"], "stream": "loan_applications",
                "entity_id": row["customer_id"], "event_time": row["event_time"] / 1000.0,
                "decided_at": now_ms / 1000.0, "score": p, "decision": decision, "reasons": reasons,
                "rules_version": version, "model_version": model_version,
                "amount": row["amount"] if row["amount"] == row["amount"] else 0.0, "granted": granted,
            })
        self.model.remember([r["application_id"] for r in rows], features)
        self._open_lines(out)
        if self.warning is not None:
            out.alerts += self.warning.observe([
                Observation(d["entity_id"], int(d["event_time"] * 1000), "application", d["amount"], 0.0,
                            max(d["amount"], d["granted"]), 0.0, score=d["score"], event_id=d["event_id"])
                for d in out.decisions])
        return out

    def stored(self, row: dict[str, Any]) -> dict[str, Any]:
        """The ``loan_applications`` table row of an application."""
        return _stored(self._mapped(row))

    def _open_lines(self, out: Outputs) -> None:
        """Each approval sets its customer's credit line to the amount granted, recorded in
        ``account_events`` like every other limit change."""
        approved = [d for d in out.decisions if d["decision"] == "approve" and d["granted"] > 0]
        if self.ledger is None or not approved:
            return
        ops = [LedgerOp("set_limit", d["entity_id"], f"application:{d['event_id']}", cents(d["granted"]))
               for d in approved]
        try:
            states = self.ledger.apply(ops)
        except RedisUnavailable:
            states = self._unopened(approved, ops)
        out.rows["account_events"] = [
            event_row({"event_id": op.event_id, "event_time": int(d["event_time"] * 1000), "account_id": op.line,
                       "kind": "limit_change", "amount": d["granted"], "auth_id": "",
                       "source": f"loan application {d['event_id']}"}, st)
            for d, op, st in zip(approved, ops, states) if st.status != "unopened"]

    def _unopened(self, approved: list[dict[str, Any]], ops: list[LedgerOp]) -> list[LineState]:
        """Credit lines unreachable (Redis): under the ``closed`` policy the approvals are
        referred and no line opens; under ``open`` they stand and the lines open when Redis is
        back (``deferred`` in ``account_events``, with the limit granted)."""
        if self.outage == "open":
            self.ledger.defer(ops)
            why = "CREDIT_LINE_DEFERRED: credit lines unreachable (Redis); the line opens when it is back (fail-open)"
        else:
            why = "CREDIT_LINE_UNAVAILABLE: credit lines unreachable (Redis); referred (fail-closed)"
        for d in approved:
            d["reasons"] = [why, *d["reasons"]]
            if self.outage != "open":
                d["decision"], d["granted"] = "review", 0.0
        status = "deferred" if self.outage == "open" else "unopened"
        return [LineState(status, op.amount, 0, 0) for op in ops]

    def labels_arrived(self, labels: list[dict[str, Any]]) -> None:
        pass

    def learn(self, labels: list[dict[str, Any]]) -> int:
        return self.model.learn_from_labels([r["event_id"] for r in labels], [r["is_positive"] for r in labels])

    def checkpoint(self) -> bytes:
        return self.model.checkpoint()

    def restore(self, blob: bytes) -> None:
        self.model.restore(blob)

    @property
    def version(self) -> str:
        return self.model.version

    # ----- helpers ---------------------------------------------------------------------------
    def _mapped(self, row: dict[str, Any]) -> dict[str, Any]:
        """The lender's names for the known amounts taken out of the attributes."""
        if not self.policy.fields:
            return row
        row = dict(row, attributes=dict(row["attributes"]))
        for known, theirs in self.policy.fields.items():
            value = row["attributes"].pop(theirs, None)
            if value is not None and row.get(known) != row.get(known):  # a value under our own name wins
                lo, hi = LOAN_KNOWN[known]
                row[known] = float(value) if isinstance(value, float) and lo <= value <= hi else math.nan
        return row

    def _columns(self, rows: list[dict[str, Any]], features: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        """The batch as the rule kernel's columns; the ratios come from the model's features."""
        cols: dict[str, np.ndarray] = {}
        for name in self.policy.numeric_columns:
            if name in LOAN_KNOWN:
                values = [r[name] for r in rows]
            elif name in RATIOS:
                values = [f.get(name, math.nan) for f in features]
            else:
                values = [_number(r["attributes"].get(name)) for r in rows]
            cols[name] = np.asarray(values, np.float64)
        for name in self.policy.text_columns:
            values = [r.get(name) if name in ("customer_id", "application_id") else r["attributes"].get(name)
                      for r in rows]
            cols[name] = np.asarray(["" if v is None else str(v) for v in values], dtype=object)
        return cols

    def _band_reason(self, p: float) -> str:
        pol = self.policy
        if p >= pol.decline_pd:
            return f"PD: {p:.1%}, at or above the decline line {pol.decline_pd:.0%}"
        if p >= pol.refer_pd:
            return f"PD: {p:.1%}, in the refer band {pol.refer_pd:.0%}-{pol.decline_pd:.0%}"
        return f"PD: {p:.1%}, under the refer line {pol.refer_pd:.0%}"


def _compiled(policy: CreditPolicy):
    if policy.rule_set is None:
        return None
    dtypes: dict[str, Any] = {c: np.float64 for c in policy.numeric_columns}
    dtypes.update({c: object for c in policy.text_columns})
    return compile_rule_set(policy.rule_set, dtypes)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, float) else math.nan


def _stored(row: dict[str, Any]) -> dict[str, Any]:
    """The ``loan_applications`` row: missing amounts NULL, attributes as a JSON text."""
    out = {k: (None if isinstance(v, float) and v != v else v) for k, v in row.items() if k != "attributes"}
    out["attributes"] = orjson.dumps(row["attributes"]).decode()
    return out
