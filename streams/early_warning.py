"""Early warning on credit lines: signs that a borrower is heading for default, before the loss.

From what the ledger sees of a line (authorisations with their fraud scores, settlements,
repayments) and from new loan applications of its customer, four signals raise an alert with
a severity of likelihood (how strong the signal is, 0-1) times impact (the line's exposure):

* ``credit_utilisation_rising``: the line's utilisation has climbed at least 30 points above
  its average of the past month (an event-time EWMA, half-life 30 days) and stands at 70% or
  more, on a line watched for a week at least. Re-armed once it is back within 10 points of
  that average.
* ``credit_cash_advance_share``: cash withdrawals (MCC 6010/6011) make up 30% or more of the
  line's spending over the past month (EWMAs of amounts), against a usual share under 10%.
* ``credit_payment_overdue``: the line has owed money for over ``OVERDUE_DAYS`` (a statement
  cycle and its grace period) without a repayment; once per such period.
* ``credit_score_rising``: the fraud scores of the line's authorisations (EWMA, half-life 7
  days) are at least 0.3 and twice their 60-day level; and ``credit_pd_rising``: a new
  application of the customer gets a PD at least twice the previous one and over 10%.

A line's watch state is a small hash (``rs:credit-watch:<line>`` in Redis for workers, a dict
in memory offline), read and written once per batch for the lines the batch touched. Unlike
the ledger it is not written atomically: two workers updating one line's averages at the same
moment may lose one update, which can delay a warning; it never moves money.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from riskstream.streams.redis_outage import RedisUnavailable

DAY_MS = 86_400_000
OVERDUE_DAYS = 35
CASH_MCC = frozenset({"6010", "6011"})


@dataclass
class Observation:
    line: str
    time_ms: int
    kind: str  # auth | settle | reverse | repay | application
    amount: float
    utilisation: float  # of the line after the event
    exposure: float  # balance + reserved after the event
    balance: float
    is_cash: bool = False
    score: float = math.nan  # the authorisation's fraud score, or the application's PD
    event_id: str = ""


def _decay(value: float, dt_ms: float, half_life_days: float) -> float:
    return value * 0.5 ** (max(dt_ms, 0.0) / (half_life_days * DAY_MS))


def _ewma(state: dict[str, float], key: str, value: float, dt_ms: float, half_life_days: float,
          least: float) -> float:
    """An event-time EWMA kept in ``state[key]`` (starting at the first value); each
    observation weighs at least ``least``, so that a burst at one instant still moves it."""
    old = state.get(key, value)
    state[key] = old + (value - old) * max(1.0 - _decay(1.0, dt_ms, half_life_days), least)
    return state[key]


class LocalWatch:
    """Watch states in memory (replays, tests)."""

    def __init__(self) -> None:
        self.states: dict[str, dict[str, float]] = {}

    def load(self, lines: list[str]) -> dict[str, dict[str, float]]:
        return {line: dict(self.states.get(line, {})) for line in lines}

    def save(self, states: dict[str, dict[str, float]]) -> None:
        self.states.update(states)


class RedisWatch:
    """Watch states in Redis, shared by the workers (one pipelined read and write per batch)."""

    def __init__(self, redis_client):
        self.redis = redis_client

    def load(self, lines: list[str]) -> dict[str, dict[str, float]]:
        pipe = self.redis.pipeline(transaction=False)
        for line in lines:
            pipe.hgetall(f"rs:credit-watch:{line}")
        return {line: {k.decode(): float(v) for k, v in raw.items()} for line, raw in zip(lines, pipe.execute())}

    def save(self, states: dict[str, dict[str, float]]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for line, state in states.items():
            if state:
                pipe.hset(f"rs:credit-watch:{line}", mapping=state)
        pipe.execute()


class EarlyWarning:
    def __init__(self, store=None, version: str = "early-warning-1"):
        self.store = store if store is not None else LocalWatch()
        self.version = version
        self.skipped = 0  # observations while the watch store (Redis) was unreachable

    def observe(self, observations: list[Observation]) -> list[dict[str, Any]]:
        """Fold the observations (in time order) into their lines' states; the alerts raised."""
        if not observations:
            return []
        try:
            states = self.store.load(sorted({o.line for o in observations}))
        except RedisUnavailable:
            self.skipped += len(observations)  # a read-modify-write: cannot be replayed blind
            return []
        alerts: list[dict[str, Any]] = []
        for o in sorted(observations, key=lambda x: x.time_ms):
            alerts += self._one(states[o.line], o)
        try:
            self.store.save(states)
        except RedisUnavailable:
            self.skipped += len(observations)
        return alerts

    def _one(self, s: dict[str, float], o: Observation) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if o.kind == "application":
            before = s.get("pd", math.nan)
            s["pd"] = o.score
            if before == before and o.score >= 0.10 and o.score >= 2 * before:
                out.append(self._alert(o, "credit_pd_rising", min(1.0, o.score),
                                       f"PD_RISING: customer {o.line}'s PD is {o.score:.1%}, up from {before:.1%} at "
                                       "the previous application"))
            return out
        last = s.get("t", o.time_ms)
        dt = o.time_ms - last
        s["t"] = max(last, o.time_ms)
        # Utilisation against its month average.
        avg = s.get("util_avg", o.utilisation)
        if s.get("util_warned") and o.utilisation < avg + 0.10:
            s["util_warned"] = 0.0
        if not s.get("first_t"):
            s["first_t"] = float(o.time_ms)
        known_for = o.time_ms - s["first_t"]  # a month average needs a week of history at least
        if (not s.get("util_warned") and known_for >= 7 * DAY_MS and o.utilisation >= 0.7
                and o.utilisation - avg >= 0.30):
            s["util_warned"] = 1.0
            out.append(self._alert(o, "credit_utilisation_rising", min(1.0, o.utilisation - avg),
                                   f"UTILISATION_RISING: line {o.line} is {o.utilisation:.0%} used, up from a "
                                   f"month average of {avg:.0%}"))
        _ewma(s, "util_avg", o.utilisation, dt, 30, 0.02)
        if o.kind == "auth":
            cash = _decay(s.get("cash", 0.0), dt, 30) + (o.amount if o.is_cash else 0.0)
            spend = _decay(s.get("spend", 0.0), dt, 30) + o.amount
            s["cash"], s["spend"] = cash, spend
            share = cash / spend if spend > 0 else 0.0
            if s.get("cash_warned") and share < 0.2:
                s["cash_warned"] = 0.0
            if not s.get("cash_warned") and o.is_cash and share >= 0.3 and spend >= 5 * o.amount:
                s["cash_warned"] = 1.0
                out.append(self._alert(o, "credit_cash_advance_share", min(1.0, share),
                                       f"CASH_ADVANCES: cash withdrawals are {share:.0%} of line {o.line}'s spending "
                                       "over the past month"))
            if o.score == o.score:
                short = _ewma(s, "score_7d", o.score, dt, 7, 0.05)
                long = _ewma(s, "score_60d", o.score, dt, 60, 0.01)
                if s.get("score_warned") and short < 1.5 * long:
                    s["score_warned"] = 0.0
                if not s.get("score_warned") and short >= 0.3 and short >= 2 * long:
                    s["score_warned"] = 1.0
                    out.append(self._alert(o, "credit_score_rising", min(1.0, short),
                                           f"FRAUD_SCORE_RISING: line {o.line}'s authorisations score {short:.2f} "
                                           f"this week against {long:.2f} over two months"))
        if o.kind == "repay":
            s["paid_t"], s["overdue_t"] = float(o.time_ms), 0.0
        # Owing without a repayment for a statement cycle and its grace.
        if o.balance > 0:
            if not s.get("owing_t"):
                s["owing_t"] = float(o.time_ms)
            since = max(s.get("paid_t", 0.0), s["owing_t"])
            if o.time_ms - since > OVERDUE_DAYS * DAY_MS and o.time_ms - s.get("overdue_t", 0.0) > OVERDUE_DAYS * DAY_MS:
                s["overdue_t"] = float(o.time_ms)
                days = (o.time_ms - since) / DAY_MS
                out.append(self._alert(o, "credit_payment_overdue", min(1.0, days / 90),
                                       f"PAYMENT_OVERDUE: line {o.line} has owed {o.balance:,.2f} for {days:.0f} days "
                                       "without a repayment"))
        else:
            s["owing_t"] = 0.0  # nothing owed (a field set to 0, not removed: the Redis hash keeps fields)
        return out

    def _alert(self, o: Observation, kind: str, likelihood: float, why: str) -> dict[str, Any]:
        severity = likelihood * o.exposure  # likelihood x impact
        level = "high" if severity >= 5_000 else "medium" if severity >= 500 else "low"
        return {
            "alert_id": f"{kind}:{o.line}:{o.time_ms}", "event_id": o.event_id, "stream": "credit",
            "entity_id": o.line, "event_time": o.time_ms / 1000.0, "raised_at": o.time_ms / 1000.0,
            "kind": kind, "severity": float(severity), "severity_level": level, "score": float(likelihood),
            "amount_at_risk": float(o.exposure), "reasons": [why], "rules_version": self.version,
        }
