"""Credit lines: limit, balance, reserved and available credit, kept exact across workers.

A credit line (a customer's, or an account's) is created or changed by an approved loan
application or by a ``limit_change`` on the ``account_events`` stream (what `riskstream
credit-line set` publishes). Card authorisations reserve credit, settlements move a hold to
the balance, reversals release it, repayments restore credit. Amounts are kept in cents.

**Mechanism: atomic Redis scripts.** A customer's cards may sit on different partitions and
workers, and the line is also written by the loan processor and by account events, so no one
partitioning co-locates everything that touches a line. Instead every batch of ledger
operations of a worker runs as one Lua script in Redis (:data:`LEDGER_SCRIPT`): Redis runs a
script alone, so an authorisation reserves only what is available when it runs, whichever
worker sends it. Each operation is applied once per event id (the answer is kept for
``RISKSTREAM_CREDIT_DEDUP_DAYS``), so a batch repeated after a restart or a replay gets the same answers and
reserves nothing twice. Topics are read at their own pace, so a settlement or reversal may
be read before its authorisation: it leaves a mark, and the authorisation then holds nothing.
Transaction services read ``rs:credit:<line>`` (a hash: ``limit``,
``balance``, ``reserved``, ``available``, in cents) synchronously.

:class:`LocalLedger` has the same semantics in process memory, for offline replays, the
bench and as the reference the Redis script is checked against.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from riskstream.streams.early_warning import CASH_MCC, Observation
from riskstream.streams.outputs import Outputs
from riskstream.streams.redis_outage import RedisUnavailable

OPS = ("auth", "settle", "reverse", "repay", "set_limit")
# A repeated event within this long gets its first answer (RISKSTREAM_CREDIT_DEDUP_DAYS): a
# key of ~100 bytes per event, so a million authorisations a day hold ~0.7 GB at 7 days.
DONE_TTL_S = 7 * 24 * 3600

LEDGER_SCRIPT = """
local out = {}
local n, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 0, n - 1 do
  local base = 3 + i * 5
  local op, line, id, amount, ref = ARGV[base], ARGV[base + 1], ARGV[base + 2], tonumber(ARGV[base + 3]), ARGV[base + 4]
  local key = 'rs:credit:' .. line
  local done_key = 'rs:credit-done:' .. line .. ':' .. op .. ':' .. id
  local status = redis.call('GET', done_key)
  local st = redis.call('HMGET', key, 'limit', 'balance', 'reserved')
  local limit, balance, reserved = tonumber(st[1] or '0'), tonumber(st[2] or '0'), tonumber(st[3] or '0')
  if not status then
    status = 'none'
    if op == 'set_limit' then
      if redis.call('SADD', 'rs:credit-lines', line) == 1 then
        redis.call('RPUSH', 'rs:credit-lines-log', line)  -- workers follow it to know every line
      end
      limit, status = amount, 'ok'
    elseif st[1] then
      local holds = 'rs:credit-holds:' .. line
      status = 'ok'
      if op == 'auth' then
        local early = 'rs:credit-early:' .. line .. ':' .. id
        if redis.call('DEL', early) == 1 then
          -- settled or reversed before it was read: nothing to hold
        elseif amount <= limit - balance - reserved then
          reserved = reserved + amount
          redis.call('HSET', holds, id, amount)
        else
          status = 'over'
        end
      elseif op == 'settle' or op == 'reverse' then
        local hold = redis.call('HGET', holds, ref)
        if hold then
          redis.call('HDEL', holds, ref)
          reserved = reserved - tonumber(hold)
        else
          redis.call('SET', 'rs:credit-early:' .. line .. ':' .. ref, op, 'EX', ttl)
        end
        if op == 'settle' then balance = balance + amount end
      elseif op == 'repay' then
        balance = balance - amount
      end
    end
    if status ~= 'none' then
      redis.call('SET', done_key, status, 'EX', ttl)
      redis.call('HSET', key, 'limit', limit, 'balance', balance, 'reserved', reserved,
                 'available', limit - balance - reserved)
    end
  end
  table.insert(out, status)
  table.insert(out, limit)
  table.insert(out, balance)
  table.insert(out, reserved)
end
return out
"""


@dataclass(frozen=True)
class LedgerOp:
    op: str  # one of OPS
    line: str
    event_id: str
    amount: int  # cents
    ref: str = ""  # settle / reverse: the authorisation's event id


@dataclass(frozen=True)
class LineState:
    """An operation's answer (``ok``, ``over``: refused, ``none``: no such line) and the line after it."""

    status: str
    limit: int
    balance: int
    reserved: int

    @property
    def available(self) -> int:
        return self.limit - self.balance - self.reserved

    @property
    def exposure(self) -> int:
        return self.balance + self.reserved

    @property
    def utilisation(self) -> float:
        return self.exposure / self.limit if self.limit > 0 else 1.0

    def observed(self, op: "LedgerOp", time_ms: int, **extra) -> Observation:
        """What early warning sees of the line after ``op``."""
        return Observation(op.line, time_ms, op.op, op.amount / 100, self.utilisation, self.exposure / 100,
                           self.balance / 100, event_id=op.event_id, **extra)


def event_row(event: dict, st: LineState) -> dict:
    """An ``account_events`` row: the event as it came, what it did and the line after it."""
    return dict(event, status=st.status, limit_after=st.limit / 100, balance_after=st.balance / 100,
                reserved_after=st.reserved / 100)


def cents(amount: float) -> int:
    return int(round(amount * 100))


class LocalLedger:
    """The ledger in process memory: the same answers as the Redis script, one process only."""

    def __init__(self) -> None:
        self.lines: dict[str, list[int]] = {}  # line -> [limit, balance, reserved]
        self.holds: dict[str, dict[str, int]] = {}
        self.done: dict[tuple[str, str, str], str] = {}
        self.early: set[tuple[str, str]] = set()  # (line, authorisation) settled before it was read

    def apply(self, ops: Sequence[LedgerOp]) -> list[LineState]:
        out = []
        for o in ops:
            key = (o.line, o.op, o.event_id)
            status = self.done.get(key)
            line = self.lines.get(o.line)
            if status is None:
                status = "none"
                if o.op == "set_limit":
                    line = self.lines.setdefault(o.line, [0, 0, 0])
                    line[0] = o.amount
                    status = "ok"
                elif line is not None:
                    status = "ok"
                    holds = self.holds.setdefault(o.line, {})
                    if o.op == "auth":
                        if (o.line, o.event_id) in self.early:
                            self.early.discard((o.line, o.event_id))
                        elif o.amount <= line[0] - line[1] - line[2]:
                            line[2] += o.amount
                            holds[o.event_id] = o.amount
                        else:
                            status = "over"
                    elif o.op in ("settle", "reverse"):
                        if o.ref in holds:
                            line[2] -= holds.pop(o.ref)
                        else:
                            self.early.add((o.line, o.ref))
                        if o.op == "settle":
                            line[1] += o.amount
                    elif o.op == "repay":
                        line[1] -= o.amount
                if status != "none":
                    self.done[key] = status
            limit, balance, reserved = line if line is not None else (0, 0, 0)
            out.append(LineState(status, limit, balance, reserved))
        return out


    def known(self):
        return self.lines.keys()


class RedisLedger:
    """The ledger in Redis, shared by every worker; one script call per batch of operations."""

    def __init__(self, redis_client, done_ttl_s: int = DONE_TTL_S):
        self.redis = redis_client
        self.done_ttl_s = done_ttl_s
        self._script = redis_client.register_script(LEDGER_SCRIPT)
        self._known: set[str] = set()  # every line created so far, read from the creation log
        self._log_read = 0

    def apply(self, ops: Sequence[LedgerOp]) -> list[LineState]:
        if not ops:
            return []
        args: list = [len(ops), self.done_ttl_s]
        for o in ops:
            args += [o.op, o.line, o.event_id, o.amount, o.ref]
        raw = self._script(keys=[], args=args)
        return [LineState(_text(raw[k]), int(raw[k + 1]), int(raw[k + 2]), int(raw[k + 3]))
                for k in range(0, len(raw), 4)]

    def known(self) -> set[str]:
        """Every line there is, so that transactions off any credit line never reach the
        script. Lines are never removed, and each new one is appended to a log: a batch costs
        one LLEN, plus the lines created since the last batch (a lookup of the batch's customers
        in one SMISMEMBER cost ~3 µs of worker CPU per transaction; bench/results). A line
        created by another worker after the LLEN counts from the next batch on."""
        size = self.redis.llen("rs:credit-lines-log")
        if size > self._log_read:
            new = self.redis.lrange("rs:credit-lines-log", self._log_read, size - 1)
            self._known.update(v.decode() for v in new)
            self._log_read = size
        return self._known

    def state(self, lines: Iterable[str]) -> dict[str, LineState]:
        lines = list(lines)
        pipe = self.redis.pipeline(transaction=False)
        for line in lines:
            pipe.hgetall(f"rs:credit:{line}")
        return {line: LineState("ok", int(h[b"limit"]), int(h[b"balance"]), int(h[b"reserved"]))
                for line, h in zip(lines, pipe.execute()) if h}


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def authorise(scored, ledger, near_utilisation: float, warning=None, outage: str = "open") -> int:
    """The credit check of a scored transaction batch (``streams.pipeline.ScoredBatch``), in
    place: every transaction not declined for fraud and charged to a credit line (its
    ``account_id``, else its ``customer_id``) reserves its amount. Refused for want of credit:
    declined, with an alert and a ``cap_amount`` control at the credit left. Left at or above
    ``near_utilisation`` of the limit: an approval goes to review, and the authorisation that
    crosses that line raises an alert. ``warning`` (``streams.early_warning``) watches the
    lines for signs of trouble. Returns how many went through the ledger.
    Redis unreachable (``streams.redis_outage``): under the ``outage`` policy ``open`` the
    decisions stand and the amounts are reserved when it is back, under ``closed`` they are
    declined; the reasons say which."""
    b = scored.batch
    account, customer = b.optional.get("account_id"), b.optional.get("customer_id")
    known = ledger.known()
    if not known or (account is None and customer is None):
        return 0
    n = b.n
    lines = account if account is not None else np.full(n, "", dtype=object)
    if customer is not None:
        lines = np.where(lines == "", customer, lines)
    decision = scored.decision
    rows = [i for i, line in enumerate(lines.tolist()) if line in known and decision[i] != "decline"]
    ops = [LedgerOp("auth", lines[i], b.transaction_id[i], cents(float(b.amount[i]))) for i in rows]
    if not ops:
        return 0
    try:
        states = ledger.apply(ops)
    except RedisUnavailable as exc:
        _unchecked(scored, ledger, rows, ops, outage, exc)
        return len(ops)
    if warning is not None:
        mcc = b.optional.get("mcc")
        scored.alerts += warning.observe([
            st.observed(op, int(b.event_time_ms[i]), is_cash=mcc is not None and mcc[i] in CASH_MCC,
                        score=float(scored.score[i]))
            for i, op, st in zip(rows, ops, states) if st.status != "none"])
    for i, op, st in zip(rows, ops, states):
        if st.status == "none":
            continue
        limit, available = st.limit / 100, st.available / 100
        if st.status == "over":
            scored.decision[i] = "decline"
            why = (f"OVER_LIMIT: amount {op.amount / 100:,.2f} exceeds the available credit {available:,.2f} "
                   f"of line {op.line} (limit {limit:,.2f})")
            scored.reasons[i] = [why, *scored.reasons[i]]
            scored.alerts.append(_credit_alert(scored, i, op, "credit_over_limit", why, 1.0 + op.amount / max(st.limit, 1)))
            scored.limits.append({
                "entity_type": "credit_line", "entity_id": op.line, "action": "cap_amount", "max_amount": available,
                "valid_until": int(b.event_time_ms[i]) / 1000.0 + 24 * 3600, "reason": why[:500],
                "event_id": op.event_id, "issued_at": scored.decided_at_ms / 1000.0, "rules_version": scored.rules_version})
        elif st.utilisation >= near_utilisation:
            before = (st.balance + st.reserved - op.amount) / st.limit if st.limit > 0 else 1.0
            why = (f"NEAR_LIMIT: line {op.line} is {st.utilisation:.0%} used after this amount "
                   f"({available:,.2f} of {limit:,.2f} left)")
            if scored.decision[i] == "approve":
                scored.decision[i] = "review"
            scored.reasons[i] = [why, *scored.reasons[i]]
            if before < near_utilisation:
                scored.alerts.append(_credit_alert(scored, i, op, "credit_near_limit", why, st.utilisation))
    return len(ops)


def _unchecked(scored, ledger, rows: list[int], ops: list[LedgerOp], outage: str, exc: Exception) -> None:
    """The credit check of ``rows`` could not run: decide them under the outage policy."""
    if outage == "open":
        ledger.defer(ops)
        why = "CREDIT_UNCHECKED: credit lines unreachable (Redis); decided without them (fail-open), amount reserved later"
    else:
        why = "CREDIT_UNCHECKED: credit lines unreachable (Redis); declined (fail-closed)"
    for i in rows:
        if outage != "open":
            scored.decision[i] = "decline"
        scored.reasons[i] = [why, *scored.reasons[i]]


def _credit_alert(scored, i: int, op: LedgerOp, kind: str, why: str, utilisation: float) -> dict:
    # Likelihood: how far into the line; impact: the amount at stake.
    b = scored.batch
    amount = float(b.amount[i])
    return {
        "alert_id": f"{b.transaction_id[i]}:{kind}", "event_id": b.transaction_id[i], "stream": "transactions",
        "entity_id": op.line, "event_time": int(b.event_time_ms[i]) / 1000.0, "raised_at": scored.decided_at_ms / 1000.0,
        "kind": kind, "severity": float(min(utilisation, 2.0) * amount),
        "severity_level": "high" if kind == "credit_over_limit" else "medium", "score": float(min(utilisation, 1.0)),
        "amount_at_risk": amount, "reasons": [why], "rules_version": scored.rules_version,
    }


class LedgerProcessor:
    """The ``account_events`` stream: each event applied to its line once, and stored with the
    line after it (the audit trail of every limit).

    While Redis is unreachable, account events are held here, in order, and applied (and
    stored) once it answers, before any that came later: a settlement or a repayment cannot be
    decided under a policy, and failing the batch instead made the worker read everything since
    its last commit again every second of the outage (`riskstream chaos` saw 38,650 repeated
    decisions in a 30 s freeze). The reader commits no account-event offset while any is held
    (``holding``), so a worker that dies meanwhile leaves them to be read again."""

    KIND_OPS = {"settlement": "settle", "reversal": "reverse", "repayment": "repay", "limit_change": "set_limit"}

    def __init__(self, ledger, warning=None, max_held: int = 1_000_000):
        self.ledger = ledger
        self.warning = warning  # streams.early_warning: repayments reset the overdue clock
        self.held: deque[list[dict]] = deque()
        self.held_rows = 0
        self.max_held = max_held

    @property
    def holding(self) -> bool:
        return bool(self.held)

    def process(self, rows: list[dict], dead: list) -> Outputs:
        if self.held_rows + len(rows) > self.max_held:
            raise RedisUnavailable(f"{self.held_rows:,} account events already wait for Redis")
        if rows:
            self.held.append(rows)
            self.held_rows += len(rows)
        out = Outputs("account_events", rows={"account_events": []}, dead=dead)
        self._apply_held(out)
        return out

    def catch_up(self) -> Outputs | None:
        """The held account events applied, if Redis answers now (their rows and alerts)."""
        if not self.held:
            return None
        out = Outputs("account_events", rows={"account_events": []})
        self._apply_held(out)
        return out

    def _apply_held(self, out: Outputs) -> None:
        while self.held:
            rows = self.held[0]
            ops = [LedgerOp(self.KIND_OPS[r["kind"]], r["account_id"], r["event_id"], cents(r["amount"]), r["auth_id"])
                   for r in rows]
            try:
                states = self.ledger.apply(ops)
            except RedisUnavailable:
                return
            self.held.popleft()
            self.held_rows -= len(rows)
            out.rows["account_events"] += [event_row(r, st) for r, st in zip(rows, states)]
            if self.warning is not None:
                out.alerts += self.warning.observe([st.observed(op, r["event_time"])
                                                    for r, op, st in zip(rows, ops, states)
                                                    if st.status == "ok" and op.op != "set_limit"])

    def labels_arrived(self, labels: list[dict]) -> None:
        pass

    def learn(self, labels: list[dict]) -> int:
        return 0

    def checkpoint(self) -> bytes | None:
        return None  # the ledger's state lives in Redis (or, offline, in the run's memory)

    def restore(self, blob: bytes) -> None:
        pass
