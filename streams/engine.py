"""Everything a worker knows and does, without a broker: the Faust agents and the offline
replay call these methods with batches and publish what comes back.

Poison records and outages are different things (STYLE.md): a record that cannot be decoded,
or that makes scoring fail, becomes a dead letter with the reason and the batch goes on; an
outage (broker, Redis, ClickHouse) raises, so that offsets are not committed and the records
come again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np
import orjson

from riskstream.schemas.events import (
    DeadLetter, PanTokenizer, TransactionBatch, decode_rows, decode_transactions,
)
from riskstream.settings import ConfigError, Settings
from riskstream.streams.pipeline import DecisionPolicy, ScoredBatch, TransactionScorer, encode_outputs

log = logging.getLogger("riskstream.engine")

ROW_TABLES = {"market": "market_ticks", "positions": "positions",
              "loan_applications": "loan_applications", "labels": "labels"}
TIME_FIELDS = ("event_time", "label_time")


def default_rules_text() -> tuple[str, str]:
    path = resources.files("riskstream.rules").joinpath("default.yaml")
    return path.read_text(), "rules/default.yaml"


def load_rules_text(settings: Settings) -> tuple[str, str]:
    if settings.rules_file:
        path = Path(settings.rules_file)
        if not path.exists():
            raise ConfigError(f"rules_file {path}: not found (RISKSTREAM_RULES_FILE).")
        return path.read_text(), str(path)
    return default_rules_text()


@dataclass
class TransactionResult:
    scored: ScoredBatch | None
    dead: list[DeadLetter] = field(default_factory=list)


class Engine:
    MAX_PENDING_LABELS = 1_000_000

    def __init__(self, settings: Settings, rules_holder=None, with_models: bool = True):
        from riskstream.detectors.features import FeatureEngine
        from riskstream.rules.compiler import RuleSetHolder

        self.settings = settings
        self.tokenizer = PanTokenizer(settings.pan_key_bytes())
        self.features = FeatureEngine()
        if rules_holder is None:
            rules_holder = RuleSetHolder(available_columns=self.rule_columns())
            text, source = load_rules_text(settings)
            rules_holder.load(text, source)
        self.rules = rules_holder
        models = None
        self.credit = None
        if with_models:
            from riskstream.detectors.credit import CreditModel
            from riskstream.detectors.fraud import FraudModels

            models = FraudModels()
            self.credit = CreditModel()
        if not settings.step_up_score <= settings.review_score <= settings.decline_score:
            raise ConfigError("score thresholds must rise: step_up_score <= review_score <= decline_score "
                              f"(got {settings.step_up_score}, {settings.review_score}, {settings.decline_score})")
        policy = DecisionPolicy(decline_score=settings.decline_score, review_score=settings.review_score,
                                step_up_score=settings.step_up_score)
        self.scorer = TransactionScorer(self.features, self.rules, models, policy)
        self.labels_learned = 0
        # Labels wait here until the transactions scored reach their label time: a replay or
        # a catching-up worker reads the small labels topic far ahead of the transactions,
        # and a label must not reach the learners before the event it labels was decided.
        self.pending_labels: list[dict] = []
        self.newest_event_ms = 0
        # Per input partition: newest event time and when data last came (wall clock).
        self.partition_time: dict[int, tuple[int, float]] = {}

    def rule_columns(self) -> list[str]:
        from riskstream.detectors.features import FEATURE_NAMES
        from riskstream.schemas.events import TRANSACTION_OPTIONAL

        return [*FEATURE_NAMES, "score", "card_id", "merchant_id", *TRANSACTION_OPTIONAL]

    # ----------------------------------------------------------------------------------
    def process_transactions(self, values: Sequence[bytes], partitions: Sequence[int] | None = None,
                             offsets: Sequence[int] | None = None, topic: str = "transactions",
                             now_ms: int | None = None) -> TransactionResult:
        batch, dead = decode_transactions(
            values, tokenizer=self.tokenizer, topic=topic, partitions=partitions, offsets=offsets,
            max_message_bytes=self.settings.max_message_bytes, max_amount=self.settings.max_amount,
            now_ms=now_ms,
        )
        return self.score_batch(batch, dead, values, topic)

    def score_batch(self, batch: TransactionBatch, dead: list[DeadLetter] | None = None,
                    values: Sequence[bytes] | None = None, topic: str = "transactions") -> TransactionResult:
        dead = dead if dead is not None else []
        if batch.n:
            self._advance(batch)
        try:
            result = TransactionResult(self.scorer.process(batch), dead)
            self._learn_due()
            return result
        except Exception as exc:  # a poison batch: find the rows that fail, keep the rest
            log.exception("scoring a batch of %d failed; retrying row by row", batch.n)
            good: list[ScoredBatch] = []
            for i in range(batch.n):
                one = batch.take(np.asarray([i]))
                try:
                    good.append(self.scorer.process(one))
                except Exception as row_exc:
                    payload = _row_payload(one)
                    dead.append(DeadLetter(topic, int(one.partition[0]), int(one.offset[0]),
                                           f"processing failed: {type(row_exc).__name__}: {row_exc}",
                                           self.tokenizer.mask(payload)))
            if not good:
                return TransactionResult(None, dead)
            del exc
            return TransactionResult(_concat_scored(good), dead)

    def process_rows(self, stream: str, records: Sequence[tuple[bytes | None, int, int]],
                     now_ms: int | None = None) -> tuple[list[dict], list[DeadLetter]]:
        rows, dead = decode_rows(stream, records, tokenizer=self.tokenizer, topic=self.settings.topic(stream),
                                 max_message_bytes=self.settings.max_message_bytes, now_ms=now_ms)
        if stream == "labels" and rows:
            self.learn(rows)
        return rows, dead

    def learn(self, labels: list[dict]) -> int:
        """Take labels. The features fold each in at its label time by themselves (their own
        event-time queue); the models learn it once this worker's transactions have reached
        its label time, so that the labelled decision has been made and remembered.
        Returns how many the models learned now."""
        tx = [r for r in labels if r["stream"] == "transactions" and r["is_positive"]]
        if tx:
            def column(name: str) -> np.ndarray:
                return np.asarray([r.get(name, "") for r in tx], dtype=object)

            self.features.apply_labels(
                {"card": column("entity_id"), "merchant": column("merchant_id"), "terminal": column("terminal_id")},
                np.asarray([r.get("event_time", r["label_time"]) for r in tx], dtype=np.int64),
                np.asarray([r["label_time"] for r in tx], dtype=np.int64),
                np.ones(len(tx), dtype=np.int8),
            )
        self.pending_labels.extend(labels)
        return self._learn_due()

    IDLE_PARTITION_S = 60.0

    def _advance(self, batch: TransactionBatch) -> None:
        """Move event time on: per partition, and the watermark (the slowest partition that
        had data in the last minute, so an idle or revoked one cannot hold it back)."""
        now = time.monotonic()
        parts = batch.partition
        for p in np.unique(parts).tolist():
            newest = int(batch.event_time_ms[parts == p].max())
            old = self.partition_time.get(p, (0, now))[0]
            self.partition_time[p] = (max(old, newest), now)
        live = [t for t, seen in self.partition_time.values() if now - seen <= self.IDLE_PARTITION_S]
        self.newest_event_ms = min(live) if live else int(batch.event_time_ms.max())
        if self.scorer.models is not None:
            self.scorer.models.watermark_ms = self.newest_event_ms

    def assign_partitions(self, partitions: set[int]) -> None:
        """Assigned partitions hold the watermark back until they deliver (or go idle): a
        first fetch that returns one partition must not move event time for all of them."""
        now = time.monotonic()
        for p in partitions:
            self.partition_time.setdefault(p, (0, now))

    def forget_partitions(self, partitions: set[int]) -> None:
        """Revoked partitions no longer count for the watermark."""
        for p in partitions:
            self.partition_time.pop(p, None)

    def _learn_due(self) -> int:
        if not self.pending_labels:
            return 0
        horizon = self.newest_event_ms
        due = [r for r in self.pending_labels if r["label_time"] <= horizon]
        if len(due) < len(self.pending_labels):
            self.pending_labels = [r for r in self.pending_labels if r["label_time"] > horizon]
        else:
            self.pending_labels = []
        if len(self.pending_labels) > self.MAX_PENDING_LABELS:  # bounded: the oldest go now
            self.pending_labels.sort(key=lambda r: r["label_time"])
            extra = len(self.pending_labels) - self.MAX_PENDING_LABELS
            due += self.pending_labels[:extra]
            self.pending_labels = self.pending_labels[extra:]
        if not due:
            return 0
        learned = self.scorer.learn(due)
        self.labels_learned += learned
        return learned

    def credit_decisions(self, rows: list[dict], now_ms: int | None = None) -> list[dict]:
        """One decision per loan application."""
        if not rows:
            return []
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        prob, reasons = self.credit.score_rows(rows)
        out = []
        for row, p, why in zip(rows, prob, reasons):
            p = float(p)
            decision = "decline" if p >= 0.5 else "review" if p >= 0.25 else "approve"
            out.append({
                "event_id": row["application_id"], "stream": "loan_applications",
                "entity_id": row["customer_id"], "event_time": row["event_time"] / 1000.0,
                "decided_at": now_ms / 1000.0, "score": p, "decision": decision,
                "reasons": list(why), "rules_version": "credit-policy-1",
                "model_version": self.credit.version, "amount": row["amount"],
            })
        return out


class StateStore:
    """Worker state in Redis, so it survives restarts and follows partitions.

    Feature state is saved per Kafka partition (``snapshot({p})``) when a partition is revoked,
    at shutdown and on a timer, and loaded when a partition is assigned. Model state (one
    online model per consumer group) is saved the same way and restored at start-up. Between
    two saves a crash loses at most that interval of feature updates; features are decayed
    aggregates, so the effect fades, and no decision or output is lost.
    """

    def __init__(self, engine: "Engine", redis_client, group: str):
        self.engine = engine
        self.redis = redis_client
        self.prefix = f"rs:state:{group}:"

    def save_partitions(self, partitions: set[int]) -> int:
        if not partitions:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        size = 0
        for p in partitions:
            blob = self.engine.features.snapshot({p})
            size += len(blob)
            pipe.set(f"{self.prefix}features:{p}", blob)
        pipe.execute()
        return size

    def load_partitions(self, partitions: set[int]) -> int:
        loaded = 0
        for p in sorted(partitions):
            blob = self.redis.get(f"{self.prefix}features:{p}")
            if blob:
                self.engine.features.restore(blob)
                loaded += 1
        return loaded

    def drop_partitions(self, partitions: set[int]) -> None:
        self.engine.features.drop_partitions(partitions)

    def save_models(self) -> int:
        models = self.engine.scorer.models
        if models is None:
            return 0
        blob = models.checkpoint()
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(f"{self.prefix}models", blob)
        # Labels still waiting for their event time were committed on the labels topic: keep them.
        pipe.set(f"{self.prefix}pending_labels", orjson.dumps(
            {"labels": self.engine.pending_labels, "newest_event_ms": self.engine.newest_event_ms}))
        pipe.execute()
        return len(blob)

    def load_models(self) -> bool:
        models = self.engine.scorer.models
        blob = self.redis.get(f"{self.prefix}models") if models is not None else None
        if not blob:
            return False
        models.restore(blob)
        pending = self.redis.get(f"{self.prefix}pending_labels")
        if pending:
            state = orjson.loads(pending)
            self.engine.pending_labels = state["labels"] + self.engine.pending_labels
            self.engine.newest_event_ms = max(self.engine.newest_event_ms, state["newest_event_ms"])
        return True


def batch_linger_s(received: int, settings: Settings) -> float:
    """Seconds to wait for more before scoring a batch of ``received`` events: the linger when
    the batch is short of ``batch_max_events`` (a trickle), else none. Each batch has a fixed
    cost (~2 ms of scoring and encoding, and a few broker requests), which at a few records per
    batch would dominate both CPU and latency. The worker's reader and the bench's engine
    latency loop batch by this one rule."""
    if settings.batch_linger_ms <= 0 or received >= settings.batch_max_events:
        return 0.0
    return settings.batch_linger_ms / 1000


def tune_garbage_collector(collect: bool = True) -> None:
    """For a process that runs the engine over many batches: a worker once its long-lived
    state is built; an offline replay (``replay_offline``) just before it builds its engine.

    Each batch allocates ~100k short-lived objects (decoded dicts, strings, rows), which at
    CPython's default threshold of 700 runs the cycle collector hundreds of times per batch,
    and now and then over the whole long-lived heap (engine state, models, Faust). The
    long-lived objects are frozen out of collection and young ones collected less often:
    measured ~4 µs of ~30 µs CPU per transaction saved (bench, 1 worker, 200k drain).

    A forked process passes ``collect=False``: a collection would walk, and write to, every
    object it shares with its parent, copying those pages; the freeze alone moves them out
    of later collections without touching them."""
    import gc

    if collect:
        gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def model_report(engine: "Engine") -> tuple[list[bytes], list[dict]]:
    """Periodic model upkeep: learn matured negatives, quality rows, drift alerts."""
    models = engine.scorer.models
    if models is None:
        return [], []
    models.learn_matured()
    quality = [orjson.dumps(q) for q in models.quality()]
    alerts = []
    for d in models.drift_alerts():
        at = d["detected_at"]
        alerts.append({
            "alert_id": f"drift:{d['model_version']}:{d['signal']}:{at}",
            "event_id": "", "stream": "transactions", "entity_id": d["model_version"],
            "event_time": at, "raised_at": time.time(), "kind": f"model_drift_{d['signal']}",
            "severity": 0.0, "severity_level": "high", "score": float(d["mean_error_now"]),
            "amount_at_risk": 0.0, "reasons": [f"DRIFT: {d['meaning']} (window {d['window']})"],
            "rules_version": engine.rules.current.version,
        })
    return quality, alerts


def rows_for_table(rows: list[dict]) -> list[bytes]:
    """Validated dict rows -> JSON rows with times as seconds (how ClickHouse reads them)."""
    out = []
    for r in rows:
        r = dict(r)
        for f in TIME_FIELDS:
            if f in r:
                r[f] = r[f] / 1000.0
        out.append(orjson.dumps(r))
    return out


def _row_payload(one: TransactionBatch) -> bytes:
    row = {k: (v[0].item() if hasattr(v[0], "item") else v[0]) for k, v in
           (("transaction_id", one.transaction_id), ("event_time", one.event_time_ms), ("card_id", one.card_id),
            ("merchant_id", one.merchant_id), ("amount", one.amount))}
    return orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY)


def _concat_scored(parts: list[ScoredBatch]) -> ScoredBatch:
    first = parts[0]
    idx_batches = [p.batch for p in parts]
    batch = TransactionBatch(
        transaction_id=np.concatenate([b.transaction_id for b in idx_batches]),
        event_time_ms=np.concatenate([b.event_time_ms for b in idx_batches]),
        card_id=np.concatenate([b.card_id for b in idx_batches]),
        merchant_id=np.concatenate([b.merchant_id for b in idx_batches]),
        amount=np.concatenate([b.amount for b in idx_batches]),
        lat=np.concatenate([b.lat for b in idx_batches]),
        lon=np.concatenate([b.lon for b in idx_batches]),
        optional={k: np.concatenate([b.optional[k] for b in idx_batches]) for k in first.batch.optional},
        partition=np.concatenate([b.partition for b in idx_batches]),
        offset=np.concatenate([b.offset for b in idx_batches]),
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


def publish_transactions(publisher, result: TransactionResult) -> None:
    """Hand one scored batch's outputs to the publisher (no flush)."""
    if result.scored is not None and result.scored.n:
        enc = encode_outputs(result.scored, topics=getattr(publisher, "publishes_topics", True),
                             arrow_tables=getattr(publisher, "takes_arrow_tables", False))
        publish_encoded(publisher, enc, result.scored.n)
    publisher.dead_letters(result.dead)


def publish_encoded(publisher, enc, rows: int) -> None:
    """Topics, Redis limits and ClickHouse blocks of one encoded batch."""
    if enc.decisions:
        publisher.send("decisions", enc.decisions)
    if enc.alerts:
        publisher.send("alerts", enc.alerts)
    if enc.limits:
        publisher.send("limits", enc.limits)
        publisher.limits(enc.redis_limits)
    for table, rows_ in enc.sink_rows.items():
        publisher.sink(table, rows_)
    for table, blocks in enc.sink_arrow.items():
        publisher.sink_arrow(table, blocks, rows)
