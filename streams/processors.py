"""The driver's processors: one per domain, one contract.

Each processor owns its state and answers, on batches:

* ``process(...) -> Outputs``: score and decide (or store) one batch;
* ``labels_arrived(labels)``: outcomes as they are read (label-driven features fold them in
  at their own label time);
* ``learn(labels) -> int``: outcomes whose time has come (the driver's label clock decides),
  returns how many the models learned;
* ``checkpoint() -> bytes | None`` / ``restore(blob)``: model state (per-partition feature
  state is the transaction processor's ``features``, saved by ``streams.state``).

Market ticks and positions have theirs in ``streams.market``, loan applications in
``streams.loans``.

Processors are plain objects: tests drive them without a broker.
"""

from __future__ import annotations

import logging
import time
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import orjson

from riskstream.schemas.events import DeadLetter
from riskstream.schemas.pan import PanTokenizer
from riskstream.schemas.transactions import TransactionBatch
from riskstream.settings import ConfigError, Settings
from riskstream.streams.ledger import authorise
from riskstream.streams.outputs import Outputs
from riskstream.streams.pipeline import DecisionPolicy, ScoredBatch, TransactionScorer, concat_scored

log = logging.getLogger("riskstream.processors")


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


def transaction_rule_columns() -> list[str]:
    """What transaction rules can name: the features, the model score and the text columns."""
    from riskstream.detectors.features import FEATURE_NAMES
    from riskstream.schemas.transactions import TRANSACTION_OPTIONAL

    return [*FEATURE_NAMES, "score", "card_id", "merchant_id", *TRANSACTION_OPTIONAL]


# --------------------------------------------------------------------------------------
# Transactions: features -> rules -> fraud models -> decision
# --------------------------------------------------------------------------------------
class TransactionProcessor:
    """Card transactions: fraud scoring and decisions, on columnar batches."""

    def __init__(self, settings: Settings, tokenizer: PanTokenizer, rules_holder=None, with_models: bool = True,
                 ledger=None, warning=None, train_in_background: bool = False):
        from riskstream.detectors.features import FeatureEngine
        from riskstream.rules.compiler import RuleSetHolder

        self.tokenizer = tokenizer
        self.features = FeatureEngine()
        if rules_holder is None:
            rules_holder = RuleSetHolder(available_columns=transaction_rule_columns())
            text, source = load_rules_text(settings)
            rules_holder.load(text, source)
        self.rules = rules_holder
        models = None
        if with_models:
            from riskstream.detectors.fraud import FraudModels

            maturity = settings.label_maturity_ms("transactions")
            challenger = None
            if settings.fraud_challenger != "off":
                from riskstream.detectors.retrained import RetrainedTrees

                # A worker trains beside its decisions; a replay in line, at the same event times
                # every run.
                challenger = RetrainedTrees(background=train_in_background)
            margin = settings.fraud_challenger_margin if settings.fraud_challenger == "promote" else None
            models = FraudModels(challenger=challenger, promote_margin=margin,
                                 calibrate=settings.fraud_calibration == "platt",
                                 prove_auc=settings.fraud_proof_auc or None,
                                 **({"maturity_ms": maturity} if maturity else {}))
        if not settings.step_up_score <= settings.review_score <= settings.decline_score:
            raise ConfigError("score thresholds must rise: step_up_score <= review_score <= decline_score "
                              f"(got {settings.step_up_score}, {settings.review_score}, {settings.decline_score})")
        policy = DecisionPolicy(decline_score=settings.decline_score, review_score=settings.review_score,
                                step_up_score=settings.step_up_score)
        budget = None
        if settings.review_budget or settings.step_up_budget:
            from riskstream.streams.alert_budget import AlertBudget

            budget = AlertBudget(settings.review_budget, settings.step_up_budget)
        self.scorer = TransactionScorer(self.features, self.rules, models, policy, budget)
        self.ledger = ledger  # streams.ledger: credit lines the transactions draw on
        self.warning = warning  # streams.early_warning: signs of trouble on those lines
        self.near_utilisation = settings.credit_near_utilisation
        self.outage = settings.redis_outage_policy.get("transactions", "open")

    @property
    def models(self):
        return self.scorer.models

    def process(self, batch: TransactionBatch, dead: list[DeadLetter] | None = None,
                values: Sequence[bytes] | None = None, topic: str = "transactions") -> Outputs:
        """Score one batch. A batch that makes scoring fail is retried row by row: the rows
        that fail become dead letters carrying their original bytes (``values``, the
        messages the batch was decoded from), the rest are decided."""
        dead = dead if dead is not None else []
        try:
            scored = self.scorer.process(batch)
        except Exception:
            log.exception("scoring a batch of %d failed; retrying row by row", batch.n)
        else:
            self._credit_check(scored)
            return Outputs("transactions", scored=scored, dead=dead)
        good: list[ScoredBatch] = []
        for i in range(batch.n):
            one = batch.take(np.asarray([i]))
            try:
                good.append(self.scorer.process(one))
            except Exception as row_exc:
                dead.append(DeadLetter(topic, int(one.partition[0]), int(one.offset[0]),
                                       f"processing failed: {type(row_exc).__name__}: {row_exc}",
                                       self.tokenizer.mask(_original_bytes(one, values))))
        scored = concat_scored(good) if good else None
        if scored is not None:
            self._credit_check(scored)
        return Outputs("transactions", scored=scored, dead=dead)

    def _credit_check(self, scored: ScoredBatch) -> None:
        """Authorisations on credit lines reserve credit (``streams.ledger``). A ledger that
        cannot be reached is decided without under the outage policy (``streams.redis_outage``)."""
        if self.ledger is not None and scored.n:
            t = time.perf_counter()
            authorise(scored, self.ledger, self.near_utilisation, self.warning, self.outage)
            self.scorer.stage_seconds["credit"] += time.perf_counter() - t

    def labels_arrived(self, labels: list[dict[str, Any]]) -> None:
        """Confirmed frauds count for the card's, merchant's and terminal's fraud-rate features
        from their label time on (the feature engine keeps its own event-time queue)."""
        tx = [r for r in labels if r["is_positive"]]
        if not tx:
            return

        def column(name: str) -> np.ndarray:
            return np.asarray([r.get(name, "") for r in tx], dtype=object)

        self.features.apply_labels(
            {"card": column("entity_id"), "merchant": column("merchant_id"), "terminal": column("terminal_id")},
            np.asarray([r.get("event_time", r["label_time"]) for r in tx], dtype=np.int64),
            np.asarray([r["label_time"] for r in tx], dtype=np.int64),
            np.ones(len(tx), dtype=np.int8),
        )

    def learn(self, labels: list[dict[str, Any]]) -> int:
        return self.scorer.learn(labels)

    def set_watermark(self, ms: int) -> None:
        if self.models is not None:
            self.models.watermark_ms = ms

    def upkeep(self, rules_version: str) -> Outputs:
        """Periodic model upkeep: learn matured negatives, quality rows, drift alerts."""
        out = Outputs("transactions")
        models = self.models
        if models is None:
            return out
        models.learn_matured()
        out.rows["model_quality"] = models.quality()
        for d in models.drift_alerts():
            at = d["detected_at"]
            out.alerts.append({
                "alert_id": f"drift:{d['model_version']}:{d['signal']}:{at}",
                "event_id": "", "stream": "transactions", "entity_id": d["model_version"],
                "event_time": at, "raised_at": time.time(), "kind": f"model_drift_{d['signal']}",
                "severity": 0.0, "severity_level": "high", "score": float(d["mean_error_now"]),
                "amount_at_risk": 0.0, "reasons": [f"DRIFT: {d['meaning']} (window {d['window']})"],
                "rules_version": rules_version,
            })
        return out

    def checkpoint(self) -> bytes | None:
        return self.models.checkpoint() if self.models is not None else None

    def restore(self, blob: bytes) -> None:
        if self.models is not None:
            self.models.restore(blob)

    @property
    def version(self) -> str:
        return self.models.version if self.models is not None else "none"


def _original_bytes(one: TransactionBatch, values: Sequence[bytes] | None) -> bytes:
    """The message a one-row batch was decoded from; for a batch built from a file's columns,
    the row as JSON."""
    if values is not None and one.source_row is not None:
        return values[int(one.source_row[0])] or b""
    row = {"transaction_id": one.transaction_id[0], "event_time": int(one.event_time_ms[0]),
           "card_id": one.card_id[0], "merchant_id": one.merchant_id[0], "amount": float(one.amount[0]),
           **{k: v[0] for k, v in one.optional.items() if v[0]}}
    return orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY)

