"""The transaction path as plain functions over columnar batches: no broker, no I/O.

    decode (schemas.events) -> features (numba) -> rules (numba) -> models (River)
        -> decision -> encoded outputs (decisions, alerts, limits, ClickHouse rows)

The Faust worker only moves batches through :class:`TransactionScorer` and publishes what
:func:`encode_outputs` returns; tests and ``riskstream replay --offline`` call the same code.

Decision precedence (first match wins), applied per transaction:
1. an existing block on the card (a limit control issued earlier)  -> decline
2. an active ``decline`` / ``block_card`` rule (deny lists, hard rules) -> decline
3. an active ``allow`` rule (allow lists)                              -> approve
4. model score >= decline threshold                                    -> decline
5. an active ``review`` rule, or score >= review threshold             -> review
6. an active ``step_up`` / ``cut_limit`` rule, or score >= step-up      -> step_up
7. otherwise                                                           -> approve
Shadow rules are evaluated and recorded in reasons as ``shadow:`` but never change the decision.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from riskstream.schemas.transactions import TransactionBatch, constant_column

SCORER_STAGES = ("features", "models_score", "models_remember", "rules", "decide", "alerts", "credit")
NO_REASONS: tuple[str, ...] = ()  # shared by every clean row: most rows have no reasons


@dataclass(frozen=True)
class DecisionPolicy:
    decline_score: float = 0.90
    review_score: float = 0.60
    step_up_score: float = 0.35
    # A model decline this sure also blocks the card, so the next attempt is stopped at the
    # transaction service from Redis without waiting for the engine.
    block_score: float = 0.97
    block_hours: float = 24.0  # a model-issued block; rule-issued controls carry their own hours
    # Alerts: expected loss (score x amount) thresholds for the severity levels.
    severity_levels: tuple[tuple[float, str], ...] = ((1000.0, "critical"), (250.0, "high"), (50.0, "medium"), (0.0, "low"))


@dataclass
class ScoredBatch:
    batch: TransactionBatch
    score: np.ndarray  # float32, risk probability
    decision: np.ndarray  # object (str)
    reasons: list[list[str]]
    rules_version: str
    model_version: str
    alerts: list[dict[str, Any]] = field(default_factory=list)
    limits: list[dict[str, Any]] = field(default_factory=list)
    features: dict[str, np.ndarray] = field(default_factory=dict)
    decided_at_ms: int = 0
    # The retrained trees' probability in shadow (NaN before their first model), and their version
    challenger_score: np.ndarray | None = None
    challenger_version: str = ""

    @property
    def n(self) -> int:
        return self.batch.n


def _severity_level(expected_loss: float, policy: DecisionPolicy) -> str:
    for threshold, name in policy.severity_levels:
        if expected_loss >= threshold:
            return name
    return "low"


class BlockList:
    """Cards under a block or a cut limit issued by this engine, with their expiry (event time)."""

    def __init__(self) -> None:
        self.until_ms: dict[str, int] = {}
        self.max_amount: dict[str, float] = {}

    def apply(self, limit: dict[str, Any]) -> None:
        until = int(limit["valid_until"] * 1000)
        self.until_ms[limit["entity_id"]] = until
        self.max_amount[limit["entity_id"]] = float(limit["max_amount"])

    def rename(self, moved: dict[str, str]) -> None:
        """Blocks and cut limits follow a card to its token under a new key (``schemas.pan``)."""
        for old, new in moved.items():
            if old in self.until_ms and new not in self.until_ms:
                self.until_ms[new] = self.until_ms.pop(old)
                self.max_amount[new] = self.max_amount.pop(old)

    def violations(self, batch: TransactionBatch) -> np.ndarray:
        """Rows whose card is blocked, or over its cut limit, at the row's event time."""
        out = np.zeros(batch.n, dtype=bool)
        if not self.until_ms:
            return out
        # One C-level membership pass over the batch; the per-row check runs only for the
        # few cards that have a control.
        controlled = np.fromiter(map(self.until_ms.__contains__, batch.card_id), dtype=bool, count=batch.n)
        for i in np.flatnonzero(controlled).tolist():
            card = batch.card_id[i]
            if batch.event_time_ms[i] < self.until_ms[card]:
                out[i] = batch.amount[i] > self.max_amount[card]
        return out


def rule_columns(batch: TransactionBatch, feats: dict[str, np.ndarray], score: np.ndarray) -> dict[str, np.ndarray]:
    """What rules can name: the features, the model score and the transaction's text columns."""
    columns: dict[str, np.ndarray] = dict(feats)
    columns["score"] = score
    columns["card_id"] = batch.card_id
    columns["merchant_id"] = batch.merchant_id
    columns.update(batch.optional)
    return columns


class TransactionScorer:
    """Features, rules, models and the decision for transaction batches (state in memory)."""

    def __init__(self, features, rules, models=None, policy: DecisionPolicy | None = None, budget=None):
        self.features = features  # detectors.features.FeatureEngine
        self.rules = rules  # rules.compiler.RuleSetHolder
        self.models = models  # detectors.fraud.FraudModels or None
        self.policy = policy or DecisionPolicy()
        self.budget = budget  # streams.alert_budget.AlertBudget: thresholds from a review capacity
        self.blocks = BlockList()
        # Seconds spent in each stage since the scorer was built (the bench's stage profile).
        self.stage_seconds = dict.fromkeys(SCORER_STAGES, 0.0)

    def process(self, batch: TransactionBatch, now_ms: int | None = None) -> ScoredBatch:
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        n = batch.n
        clock = time.perf_counter
        t0 = clock()
        feats = self.features.compute(batch) if n else {}
        names = list(feats)
        t1 = t2 = clock()
        if self.models is not None and n:
            X = np.column_stack([feats[k] for k in names]).astype(np.float32, copy=False)
            scored = self.models.score(X, names)
            # The model that does not decide scores in shadow (detectors.champion): its
            # probability and version go to the decision's challenger columns.
            challenger, challenger_version = scored.shadow, scored.shadow_version
            score = np.clip(np.asarray(scored.probability, dtype=np.float32), 0.0, 1.0)
            t2 = clock()
            model_version = self.models.version  # the version that scored: remember may learn and move it
            self.models.remember(batch.transaction_id, X, batch.event_time_ms, scores=score, entity_ids=batch.card_id,
                                 challenger_scores=scored.challenger, online_scores=scored.online)
        else:
            scored = challenger = None
            challenger_version = ""
            score = np.zeros(n, dtype=np.float32)
            model_version = "none"
        t3 = clock()
        ruleset = self.rules.current
        columns = rule_columns(batch, feats, score)
        outcome = ruleset.evaluate(columns, batch.arrow) if n else None
        t4 = clock()
        decision, reasons, limits = self.decide(batch, score, outcome, ruleset, scored, columns, now_ms)
        t5 = clock()
        out = ScoredBatch(batch, score, decision, reasons, ruleset.version, model_version,
                          limits=limits, features=feats, decided_at_ms=now_ms)
        if challenger_version:
            out.challenger_version = challenger_version
            out.challenger_score = challenger if challenger is not None else np.full(n, np.nan, np.float32)
        out.alerts = self._alerts(out)
        t6 = clock()
        seconds = self.stage_seconds
        for stage, start, end in (("features", t0, t1), ("models_score", t1, t2), ("models_remember", t2, t3),
                                  ("rules", t3, t4), ("decide", t4, t5), ("alerts", t5, t6)):
            seconds[stage] += end - start
        return out

    # ----------------------------------------------------------------------------------
    def decide(self, batch, score, outcome, ruleset, scored, columns, now_ms):
        """The decision policy over given scores and rule outcomes (see the module docstring):
        decisions, reasons per row, and the limit controls issued."""
        n = batch.n
        p = self.policy
        decision = constant_column(n, "approve")
        reasons: list = [NO_REASONS] * n
        limits: list[dict[str, Any]] = []
        if n == 0:
            return decision, reasons, limits

        hit_any = {a: np.zeros(n, dtype=bool) for a in ("decline", "block_card", "allow", "review", "step_up", "cut_limit")}
        if outcome is not None and len(outcome.rule_ids):
            active = ~np.asarray(outcome.shadow, dtype=bool)
            for r, action in enumerate(outcome.actions):
                if active[r] and action in hit_any:
                    hit_any[action] |= outcome.hits[r]

        blocked = self.blocks.violations(batch)
        hard_decline = hit_any["decline"] | hit_any["block_card"] | blocked
        allow = hit_any["allow"] & ~hard_decline
        step_up_at, review_at = (self.budget.thresholds(p.step_up_score, p.review_score) if self.budget is not None
                                 else (p.step_up_score, p.review_score))
        model_decline = (score >= p.decline_score) & ~hard_decline & ~allow
        review = (hit_any["review"] | (score >= review_at)) & ~hard_decline & ~allow & ~model_decline
        step_up = ((hit_any["step_up"] | hit_any["cut_limit"] | (score >= step_up_at))
                   & ~hard_decline & ~allow & ~model_decline & ~review)
        if self.budget is not None:
            self.budget.keep_within(batch.event_time_ms, score, review, step_up, hit_any["review"],
                                    hit_any["step_up"] | hit_any["cut_limit"])
            self.budget.observe(score)
        decision[step_up] = "step_up"
        decision[review] = "review"
        decision[model_decline | hard_decline] = "decline"

        # Reasons only where something fired: rendering text costs, most rows are clean.
        hit_rows = np.zeros(n, dtype=bool)
        if outcome is not None and len(outcome.rule_ids):
            hit_rows |= outcome.hits.any(axis=0)
        flagged = hit_rows | blocked | (score >= step_up_at)
        model_rows = np.flatnonzero(score >= step_up_at)
        model_text = model_reasons(scored, score, model_rows)
        for i in np.flatnonzero(flagged).tolist():
            row: list[str] = []
            if blocked[i]:
                row.append(f"LIMIT_BLOCK: card is under a limit control issued earlier "
                           f"(max amount {self.blocks.max_amount.get(batch.card_id[i], 0):g})")
            if outcome is not None and hit_rows[i]:
                row.extend(("shadow:" if r.shadow else "") + f"{r.code}: {r.text}" for r in outcome.reasons(i))
            if i in model_text:
                row.append(model_text[i])
            reasons[i] = row

        # Limit controls: rule-issued blocks/cuts, and blocks for near-certain model declines.
        limit_rows = np.flatnonzero(hit_any["block_card"] | hit_any["cut_limit"] | (score >= p.block_score))
        for i in limit_rows:
            card = batch.card_id[i]
            is_block = bool(hit_any["block_card"][i] or score[i] >= p.block_score)
            rule_hours = [float(prm["hours"]) for _, act, prm in (outcome.limit_controls(i) if outcome else [])
                          if "hours" in prm and (act == "block_card") == is_block]
            hours = max(rule_hours) if rule_hours else p.block_hours
            max_amount = 0.0 if is_block else _cut_limit_amount(outcome, i, batch.amount[i])
            limit = {
                "entity_type": "card",
                "entity_id": card,
                "action": "block" if is_block else "cut_limit",
                "max_amount": max_amount,
                "valid_until": (int(batch.event_time_ms[i]) + int(hours * 3_600_000)) / 1000.0,
                "reason": (reasons[i][0] if reasons[i] else "MODEL_SCORE")[:500],
                "event_id": batch.transaction_id[i],
                "issued_at": now_ms / 1000.0,
                "rules_version": ruleset.version,
            }
            limits.append(limit)
            self.blocks.apply(limit)
        return decision, reasons, limits

    def _alerts(self, out: ScoredBatch) -> list[dict[str, Any]]:
        alerts = []
        rows = np.flatnonzero(out.decision != "approve")
        b = out.batch
        for i in rows:
            likelihood = float(out.score[i])
            if out.decision[i] == "decline" and likelihood < 0.5:
                likelihood = max(likelihood, 0.9)  # a hard rule decline is near-certain by policy
            amount = float(b.amount[i])
            expected_loss = likelihood * amount
            alerts.append({
                "alert_id": f"{b.transaction_id[i]}:{out.decision[i]}",
                "event_id": b.transaction_id[i],
                "stream": "transactions",
                "entity_id": b.card_id[i],
                "event_time": int(b.event_time_ms[i]) / 1000.0,
                "raised_at": out.decided_at_ms / 1000.0,
                "kind": f"fraud_{out.decision[i]}",
                "severity": expected_loss,
                "severity_level": _severity_level(expected_loss, self.policy),
                "score": float(out.score[i]),
                "amount_at_risk": amount,
                "reasons": out.reasons[i],
                "rules_version": out.rules_version,
            })
        return alerts

    def learn(self, labels: list[dict[str, Any]]) -> int:
        """Late outcomes: model learning and label-driven features. Returns events learned."""
        tx = [r for r in labels if r["stream"] == "transactions"]
        if not tx:
            return 0
        learned = 0
        if self.models is not None:
            learned = self.models.learn_from_labels(
                np.asarray([r["event_id"] for r in tx], dtype=object),
                np.asarray([r["is_positive"] for r in tx], dtype=np.int8),
                np.asarray([r["label_time"] for r in tx], dtype=np.int64),
            )
        return learned


def concat_scored(parts: list[ScoredBatch]) -> ScoredBatch:
    """One scored batch of several (the rows of a batch that was retried row by row)."""
    first = parts[0]
    batches = [p.batch for p in parts]

    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(b, name) for b in batches])

    batch = TransactionBatch(
        transaction_id=cat("transaction_id"), event_time_ms=cat("event_time_ms"), card_id=cat("card_id"),
        merchant_id=cat("merchant_id"), amount=cat("amount"), lat=cat("lat"), lon=cat("lon"),
        optional={k: np.concatenate([b.optional[k] for b in batches]) for k in first.batch.optional},
        partition=cat("partition"), offset=cat("offset"),
    )
    return ScoredBatch(
        batch=batch,
        score=np.concatenate([p.score for p in parts]),
        decision=np.concatenate([p.decision for p in parts]),
        reasons=[r for p in parts for r in p.reasons],
        rules_version=first.rules_version,
        model_version=parts[-1].model_version,
        alerts=[a for p in parts for a in p.alerts],
        limits=[lim for p in parts for lim in p.limits],
        decided_at_ms=first.decided_at_ms,
    )


def model_reasons(scored, score: np.ndarray, rows: np.ndarray, k: int = 3) -> dict[int, str]:
    """``MODEL_SCORE`` reasons for the given rows, with the features that pushed the fraud
    logit up the most; the top-k search runs once for all rows, not once per row."""
    if len(rows) == 0:
        return {}
    out: dict[int, str] = {}
    if scored is None:
        return {i: f"MODEL_SCORE: fraud probability {score[i]:.2f}" for i in rows.tolist()}
    contrib = scored.contributions[rows]
    values = scored.values[rows]
    k = min(k, contrib.shape[1])
    top = np.argpartition(-contrib, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(contrib, top, axis=1), axis=1)
    top = np.take_along_axis(top, order, axis=1)
    names = scored.feature_names
    for r, i in enumerate(rows.tolist()):
        parts = [f"{names[j]}={values[r, j]:.4g} pushed {contrib[r, j]:+.1f}"
                 for j in top[r].tolist() if contrib[r, j] > 0.05]
        text = f"MODEL_SCORE: fraud probability {score[i]:.2f}"
        out[i] = text + (" (" + "; ".join(parts) + ")" if parts else "")
    return out


def _cut_limit_amount(outcome, i: int, amount: float) -> float:
    """The lowest max_amount among the active cut_limit rules hit, else half this amount."""
    amounts = [float(params["limit"]) for _, action, params in (outcome.limit_controls(i) if outcome else [])
               if action == "cut_limit" and "limit" in params]
    return min(amounts) if amounts else float(max(1.0, math.floor(amount / 2)))


# --------------------------------------------------------------------------------------
# Encoding: one place decides what every output looks like
# --------------------------------------------------------------------------------------
@dataclass
class EncodedOutputs:
    decisions: list[tuple[bytes, bytes]]  # (key, value) for the decisions topic
    alerts: list[tuple[bytes, bytes]]
    limits: list[tuple[bytes, bytes]]
    sink_rows: dict[str, list[bytes]]  # table -> JSON rows
    redis_limits: list[dict[str, Any]]
    # table -> Arrow IPC streams, or Arrow tables for an in-process writer (encode_outputs)
    sink_arrow: dict[str, list[Any]] = field(default_factory=dict)


def decision_rows(scored: ScoredBatch) -> list[bytes]:
    b = scored.batch
    dumps = orjson.dumps
    decided_at = scored.decided_at_ms / 1000.0
    ev = (b.event_time_ms / 1000.0).tolist()
    score = scored.score.tolist()
    amount = b.amount.tolist()
    rv, mv = scored.rules_version, scored.model_version
    return [
        dumps({
            "event_id": tid, "stream": "transactions", "entity_id": card, "event_time": t,
            "decided_at": decided_at, "score": s, "decision": d, "reasons": r,
            "rules_version": rv, "model_version": mv, "amount": a,
        })
        for tid, card, t, s, d, r, a in zip(b.transaction_id.tolist(), b.card_id.tolist(), ev, score,
                                           scored.decision.tolist(), scored.reasons, amount)
    ]


TRANSACTION_STRING_COLUMNS = ("terminal_id", "customer_id", "currency", "country", "channel", "mcc",
                              "device_id", "ip", "account_id")
# Arrow blocks stay under the broker's 1 MB message limit (about 60-120 bytes a row).
ARROW_BLOCK_ROWS = 4000


def _ipc_blocks(table, block_rows: int, max_bytes: int | None = None) -> list[bytes]:
    """Arrow IPC streams of at most ``block_rows`` rows and ``max_bytes`` bytes each.

    The producer refuses a message over its limit (checked before compression), and a
    refused message would fail the batch on every retry: a block that comes out too big is
    split in half until it fits.
    """
    import pyarrow as pa

    from riskstream.sinks.clickhouse import MAX_BLOCK_BYTES

    limit = max_bytes or MAX_BLOCK_BYTES
    blocks: list[bytes] = []

    def emit(part) -> None:
        sink = pa.BufferOutputStream()
        # Options given: without them pyarrow reads two environment variables per stream.
        with pa.ipc.new_stream(sink, part.schema, options=_ipc_options()) as writer:
            writer.write_table(part)
        blob = sink.getvalue().to_pybytes()
        if len(blob) > limit and part.num_rows > 1:
            half = part.num_rows // 2
            emit(part.slice(0, half))
            emit(part.slice(half))
        else:
            blocks.append(blob)

    for start in range(0, table.num_rows, block_rows):
        emit(table.slice(start, block_rows))
    return blocks


@functools.cache
def _ipc_options():
    import pyarrow as pa

    return pa.ipc.IpcWriteOptions()


def _finite(values: np.ndarray) -> np.ndarray:
    """``np.nan_to_num`` where a value needs it: it costs ~8 µs a call on a few rows."""
    return values if np.isfinite(values).all() else np.nan_to_num(values)


def _array(values, type=None):
    """``pa.array`` without pandas conversion semantics: NaN stays NaN instead of becoming a
    null, which the non-Nullable ClickHouse columns would refuse."""
    import pyarrow as pa

    if type is not None and pa.types.is_timestamp(type) and getattr(values, "dtype", None) == np.int64:
        # Milliseconds as they are, viewed as the timestamp: converting to a zoned timestamp
        # parses the zone every call, ~15 µs a column whatever the batch's size.
        return pa.array(values, from_pandas=False).view(type)
    return pa.array(values, type, from_pandas=False)


def _string_columns(scored: ScoredBatch) -> dict:
    """The batch's text columns as Arrow, for both tables: those it came with (offline
    replay), the others converted from their Python strings in one call and sliced. A
    ``pa.array`` per column and table, 16 calls a batch, cost ~3 µs each before its first
    value: most of the encoding of a batch of a few transactions (~40 ns a value either way)."""
    import pyarrow as pa

    b = scored.batch
    given = b.arrow or {}
    names = ("transaction_id", "card_id", "merchant_id") + TRANSACTION_STRING_COLUMNS
    out = {k: given[k] for k in names if given.get(k) is not None}
    todo = {k: b.column(k) for k in names if k not in out}
    todo["decision"] = np.asarray(scored.decision, dtype=object)
    together = pa.array(np.concatenate(list(todo.values())), pa.string(), from_pandas=False)
    for i, k in enumerate(todo):
        out[k] = together.slice(i * b.n, b.n)
    return out


def _repeat(value: str, n: int):
    """A constant string column: a list of n strings up to a hundred rows (~3 µs at a few),
    ``take`` above (a list costs 74 µs at 2,500 rows, ``take`` ~11 µs whatever the size),
    never ``pa.repeat`` (~45 µs at a few dozen rows)."""
    import pyarrow as pa

    if n <= 100:
        return pa.array([value] * n, pa.string())
    return pa.array([value], pa.string()).take(np.zeros(n, np.int32))


def decision_arrow_blocks(scored: ScoredBatch, block_rows: int = ARROW_BLOCK_ROWS) -> list[bytes]:
    """The batch's rows of the ``decisions`` table as Arrow IPC streams (ClickHouse reads them
    without the JSON parse that costs the sink several µs a row)."""
    return _ipc_blocks(decision_table(scored, _string_columns(scored)), block_rows)


def decision_table(scored: ScoredBatch, strings: dict):
    """The batch's rows of the ``decisions`` table as an Arrow table (``strings``: the
    batch's ``_string_columns``)."""
    import pyarrow as pa

    b = scored.batch
    n = b.n
    string = pa.string()
    ms = pa.timestamp("ms", tz="UTC")
    table = pa.table({
        "event_id": strings["transaction_id"],
        "stream": _repeat("transactions", n),
        "entity_id": strings["card_id"],
        "event_time": _array(b.event_time_ms, ms),
        "decided_at": _array(np.full(n, scored.decided_at_ms, dtype=np.int64), ms),
        "score": _array(scored.score.astype(np.float32, copy=False)),
        "decision": strings["decision"],
        "reasons": _array(scored.reasons, pa.list_(string)),
        "rules_version": _repeat(scored.rules_version, n),
        "model_version": _repeat(scored.model_version, n),
        "amount": _array(b.amount),
    })
    if scored.challenger_score is not None:
        table = table.append_column("challenger_score", _array(scored.challenger_score.astype(np.float32, copy=False)))
        table = table.append_column("challenger_version", _repeat(scored.challenger_version, n))
    return table


def transaction_arrow_blocks(scored: ScoredBatch, block_rows: int = ARROW_BLOCK_ROWS) -> list[bytes]:
    """The scored transactions as Arrow IPC streams for the ``transactions`` table.

    Columnar: numbers go in without a copy and strings in one pass per column, about a tenth
    of what a JSON row per transaction costs to encode; ClickHouse reads Arrow natively.
    """
    return _ipc_blocks(transaction_table(scored, _string_columns(scored)), block_rows)


def transaction_table(scored: ScoredBatch, strings: dict):
    """The scored transactions as an Arrow table for the ``transactions`` table."""
    import pyarrow as pa

    b = scored.batch
    columns = {
        "transaction_id": strings["transaction_id"],
        "event_time": _array(b.event_time_ms, pa.timestamp("ms", tz="UTC")),
        "card_id": strings["card_id"],
        "merchant_id": strings["merchant_id"],
        **{k: strings[k] for k in TRANSACTION_STRING_COLUMNS},
        "amount": _array(b.amount),
        "lat": _array(_finite(b.lat)),
        "lon": _array(_finite(b.lon)),
        "score": _array(scored.score.astype(np.float32, copy=False)),
        "decision": strings["decision"],
        "partition": _array(b.partition.astype(np.int32, copy=False)),
        "offset": _array(b.offset.astype(np.int64, copy=False)),
    }
    return pa.table(columns)


def encode_outputs(scored: ScoredBatch, topics: bool = True, arrow_tables: bool = False) -> EncodedOutputs:
    """Everything a scored batch publishes. ``topics=False`` (offline replay) skips the
    per-decision JSON messages that only the decisions topic needs. ``arrow_tables=True`` (an
    in-process writer) leaves the Arrow rows as tables: the writer thread serialises them, off
    the scoring thread (pyarrow's IPC writer releases the GIL)."""
    if topics:
        keys = [c.encode() for c in scored.batch.card_id.tolist()]
        decisions = list(zip(keys, decision_rows(scored)))
    else:
        decisions = []
    alerts = [orjson.dumps(a, option=orjson.OPT_SERIALIZE_NUMPY) for a in scored.alerts]
    limits = [orjson.dumps(lim, option=orjson.OPT_SERIALIZE_NUMPY) for lim in scored.limits]
    strings = _string_columns(scored)
    tables = {"decisions": decision_table(scored, strings), "transactions": transaction_table(scored, strings)}
    return EncodedOutputs(
        decisions=decisions,
        alerts=[(a["entity_id"].encode(), v) for a, v in zip(scored.alerts, alerts)],
        limits=[(lim["entity_id"].encode(), v) for lim, v in zip(scored.limits, limits)],
        sink_rows={"alerts": alerts, "limits": limits},
        redis_limits=scored.limits,
        sink_arrow={name: [table] if arrow_tables else _ipc_blocks(table, ARROW_BLOCK_ROWS) for name, table in tables.items()},
    )
