"""The driver: the only loop body. Every source of batches calls it.

    records or columns ─ decode (schemas) ─► processor (streams.processors) ─► Outputs
                                                  ▲                             │
                label clock (streams.clock) ──────┘              publish (streams.outputs)

The Faust worker, the offline replay (one process or N), the bench and the rules backtest all
go through :class:`Driver`: they differ only in where batches come from (Kafka, a file,
simulated messages, ClickHouse) and which publisher takes the outputs (Kafka + Redis,
ClickHouse, a recording). Which processor handles a stream is read from the stream registry.

Poison records and outages are different things (STYLE.md): a record that cannot be decoded,
or that makes scoring fail, becomes a dead letter and the batch goes on; an outage (broker,
Redis, ClickHouse) raises from the publisher, so that offsets are not committed and the
records come again.

>>> from pydantic import SecretStr
>>> from riskstream.settings import Settings
>>> from riskstream.sinks.publisher import RecordingPublisher
>>> driver = Driver(Settings(data_dir="/tmp/rs-doc-driver", pan_key=SecretStr("k" * 32)))
>>> out = driver.run("loan_applications", [b'{"application_id": "a1", "event_time": 1700000000000, '
...     b'"customer_id": "c1", "amount": 5000, "income": 60000, "term_months": 36, "credit_score": 720}',
...     b'{"broken'],
...     RecordingPublisher())
>>> out.decisions[0]["decision"], out.dead[0].error.startswith("invalid JSON")
('approve', True)
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from riskstream.schemas.events import DeadLetter, decode_rows
from riskstream.schemas.pan import tokenizer_for
from riskstream.schemas.registry import LABELLED_STREAMS, STREAMS, stream_spec
from riskstream.schemas.transactions import TransactionBatch, decode_transactions
from riskstream.settings import Settings
from riskstream.sinks.publisher import Publisher
from riskstream.streams.decision_memory import decide_once
from riskstream.streams.clock import LabelClock, SeenLabels, Watermark
from riskstream.streams.outputs import Outputs, publish
from riskstream.streams.market import MarketRiskProcessor
from riskstream.streams.early_warning import EarlyWarning, LocalWatch
from riskstream.streams.ledger import LedgerProcessor, LocalLedger
from riskstream.streams.loans import LoanProcessor
from riskstream.streams.processors import TransactionProcessor


class Driver:
    """Decode, process and publish batches of any registered stream; hand due labels to the
    processors in event time; checkpoint and restore their models."""

    def __init__(self, settings: Settings, rules_holder=None, with_models: bool = True, ledger=None, watch=None,
                 memory=None, train_in_background: bool = False):
        self.settings = settings
        self.tokenizer = tokenizer_for(settings)
        # Credit lines and their early-warning state: in Redis for workers (shared by all), in
        # memory for a replay or a test.
        self.ledger = ledger if ledger is not None else LocalLedger()
        # streams.decision_memory in a worker: a transaction seen before gets its first decision
        self.memory = memory
        # Per input partition, the last offset folded into the feature state (saved with it):
        # a record read again at or before it is not folded twice.
        self.folded: dict[int, int] = {}
        self.warning = EarlyWarning(watch if watch is not None else LocalWatch())
        self.transactions = TransactionProcessor(settings, self.tokenizer, rules_holder, with_models, self.ledger,
                                                 self.warning, train_in_background)
        self.loans = LoanProcessor(settings, ledger=self.ledger, warning=self.warning)
        self.market = MarketRiskProcessor(settings, {s.name: s.table for s in STREAMS.values() if s.processor == "market"})
        self.accounts = LedgerProcessor(self.ledger, self.warning)
        self.processors = {"transactions": self.transactions, "loans": self.loans, "market": self.market,
                           "ledger": self.accounts}
        self.watermarks = {name: Watermark() for name in LABELLED_STREAMS}
        self.clock = LabelClock()
        self.seen_labels = SeenLabels()
        self.labels_learned = 0

    # ----- shortcuts the worker and tools use --------------------------------------------
    @property
    def rules(self):
        return self.transactions.rules

    @property
    def features(self):
        return self.transactions.features

    @property
    def newest_event_ms(self) -> int:
        """The transactions' event-time watermark."""
        return self.watermarks["transactions"].ms

    def processor_for(self, stream: str):
        return self.processors[stream_spec(stream).processor]

    # ----- one batch ----------------------------------------------------------------------
    def process(self, stream: str, values: Sequence[bytes | None], partitions: Sequence[int] | None = None,
                offsets: Sequence[int] | None = None, now_ms: int | None = None) -> Outputs:
        """Decode raw messages of ``stream`` and process them."""
        spec = stream_spec(stream)
        topic = self.settings.topic(stream)
        out = self._decode_and_process(spec, stream, topic, values, partitions, offsets, now_ms)
        if self.accounts.holding and spec.processor != "ledger":  # Redis may answer again
            held = self.accounts.catch_up()
            if held is not None:
                out.add(held)
        return out

    def _decode_and_process(self, spec, stream: str, topic: str, values: Sequence[bytes | None],
                            partitions: Sequence[int] | None, offsets: Sequence[int] | None,
                            now_ms: int | None) -> Outputs:
        if spec.columnar:
            batch, dead = decode_transactions(
                values, tokenizer=self.tokenizer, topic=topic, partitions=partitions, offsets=offsets,
                max_message_bytes=self.settings.max_message_bytes, max_amount=self.settings.max_amount,
                now_ms=now_ms)
            return self.process_batch(batch, dead, values)
        n = len(values)
        parts = partitions if partitions is not None else [-1] * n
        offs = offsets if offsets is not None else [-1] * n
        row_partitions: list[int] = []
        rows, dead = decode_rows(spec.validate_row, zip(values, parts, offs), tokenizer=self.tokenizer,
                                 topic=topic, max_message_bytes=self.settings.max_message_bytes, now_ms=now_ms,
                                 partitions_out=row_partitions)
        return self.process_rows(stream, rows, dead, partitions=row_partitions)

    def process_batch(self, batch: TransactionBatch, dead: list[DeadLetter] | None = None,
                      values: Sequence[bytes] | None = None) -> Outputs:
        """A decoded transaction batch (``values``: the messages it came from, if any)."""
        moved = self.tokenizer.take_moved()
        if moved:  # cards seen under a new tokenization key keep what was kept under the old token
            self.features.rename_cards(moved)
            self.transactions.scorer.blocks.rename(moved)
        if batch.n:
            watermark = self.watermarks["transactions"].advance(batch.partition, batch.event_time_ms)
            self.transactions.set_watermark(watermark)
        topic = self.settings.topic("transactions")
        if self.memory is None or not batch.n:
            out = self.transactions.process(batch, dead, values, topic)
        else:
            out = decide_once(self.memory, lambda rows: self.transactions.process(rows, dead, values, topic),
                              batch, topic, self.folded,
                              (self.rules.current.version, self.transactions.version))
        self._note_folded(batch)
        out.learned = self._learn_due("transactions")
        return out

    def process_rows(self, stream: str, rows: list[dict[str, Any]], dead: list[DeadLetter] | None = None,
                     now_ms: int | None = None, partitions: Sequence[int] | None = None) -> Outputs:
        """Validated rows of a row-shaped stream (``partitions``: each row's, when read from Kafka)."""
        dead = dead if dead is not None else []
        spec = stream_spec(stream)
        if spec.processor == "labels":
            out = Outputs(stream, rows={spec.table: rows}, dead=dead)
            out.learned = self.learn(rows)
            return out
        if spec.processor == "loans":
            # Outcomes due by where every partition stands at the start of this batch are
            # learned before it is decided (each partition's earlier events came in earlier
            # batches); the rest after it.
            learned = 0
            if rows:
                times = np.fromiter((r["event_time"] for r in rows), dtype=np.int64, count=len(rows))
                parts = np.asarray(partitions if partitions is not None else [-1] * len(rows), dtype=np.int64)
                learned = self._learn_due(stream, self.watermarks[stream].at_start(parts, times))
            out = self._decide_loans_once(stream, rows, dead, now_ms)
            if rows:
                self.watermarks[stream].advance(parts, times)
            out.learned = learned + self._learn_due(stream)
            return out
        if spec.processor == "ledger":
            return self.accounts.process(rows, dead)
        return self.market.process(stream, rows, dead)

    def _decide_loans_once(self, stream: str, rows: list[dict[str, Any]], dead: list[DeadLetter],
                           now_ms: int | None) -> Outputs:
        """Loan applications seen before (by application id) get their first decision again
        and are not scored or learned from twice (``streams.decision_memory``)."""
        if self.memory is None or not rows:
            return self.loans.process(rows, dead, now_ms)
        topic = self.settings.topic(stream)
        earlier = self.memory.recall_decisions(topic, [r["application_id"] for r in rows],
                                               [r["event_time"] for r in rows])
        out = self.loans.process([r for i, r in enumerate(rows) if i not in earlier], dead, now_ms)
        self.memory.remember_decisions(topic, out.decisions, out.alerts)
        for i in sorted(earlier):
            decision = earlier[i]
            out.alerts += decision.pop("alerts", [])
            out.decisions.append(decision)
            out.rows.setdefault("loan_applications", []).append(self.loans.stored(rows[i]))
        return out

    def run(self, stream: str, values: Sequence[bytes | None], publisher: Publisher,
            partitions: Sequence[int] | None = None, offsets: Sequence[int] | None = None) -> Outputs:
        """:meth:`process` then :func:`~riskstream.streams.outputs.publish`."""
        out = self.process(stream, values, partitions, offsets)
        publish(out, publisher)
        return out

    def _note_folded(self, batch: TransactionBatch) -> None:
        if self.memory is None or not batch.n:
            return
        for p in np.unique(batch.partition).tolist():
            last = int(batch.offset[batch.partition == p].max())
            if last > self.folded.get(p, -1):
                self.folded[p] = last

    # ----- labels -------------------------------------------------------------------------
    def learn(self, labels: list[dict[str, Any]]) -> int:
        """Take labels as they are read. Label-driven features fold them in at their label
        time by themselves; the models learn each once its stream's event time has reached
        its label time, so that the labelled event has been decided and remembered. Returns
        how many the models learned now. A label seen before is stored again, not counted."""
        labels = self.seen_labels.fresh(labels)
        if not labels:
            return 0
        by_stream: dict[str, list[dict[str, Any]]] = {}
        for label in labels:
            by_stream.setdefault(label["stream"], []).append(label)
        for stream, rows in by_stream.items():
            self.processor_for(stream).labels_arrived(rows)
        self.clock.add(labels)
        return sum(self._learn_due(stream) for stream in by_stream)

    def _learn_due(self, stream: str, upto_ms: int | None = None) -> int:
        due = self.clock.due(stream, self.watermarks[stream].ms if upto_ms is None else upto_ms)
        if not due:
            return 0
        learned = self.processor_for(stream).learn(due)
        self.labels_learned += learned
        return learned

    # ----- partitions, upkeep, state ------------------------------------------------------
    def assign_partitions(self, partitions: set[int], stream: str = "transactions") -> None:
        self.watermarks[stream].assign(partitions)

    def forget_partitions(self, partitions: set[int], stream: str = "transactions") -> None:
        self.watermarks[stream].forget(partitions)

    def upkeep(self) -> Outputs:
        """Periodic model upkeep (matured negatives, quality rows, drift alerts)."""
        return self.transactions.upkeep(self.rules.current.version)

    def checkpoint(self, skip: tuple[str, ...] = ()) -> dict[str, Any]:
        """Model state of every processor but ``skip`` and the labels still waiting (feature
        state, and in a worker the market state, are saved per partition apart:
        ``streams.state``)."""
        return {
            "models": {name: p.checkpoint() for name, p in self.processors.items() if name not in skip},
            "labels": self.clock.state(),
            "labels_seen": self.seen_labels.state(),
            "watermarks": {name: w.ms for name, w in self.watermarks.items()},
        }

    def restore(self, state: dict[str, Any]) -> None:
        for name, blob in state.get("models", {}).items():
            if blob is not None and name in self.processors:
                self.processors[name].restore(blob)
        self.clock.load(state.get("labels", {}))
        self.seen_labels.load(state.get("labels_seen", []))
        for name, ms in state.get("watermarks", {}).items():
            if name in self.watermarks:
                self.watermarks[name].ms = max(self.watermarks[name].ms, int(ms))

    def summary(self) -> str:
        models = self.transactions.models
        stats = models.stats if models is not None else {}
        return (f"event-time watermark {self.newest_event_ms}, labels waiting {len(self.clock)} (repeats ignored {self.seen_labels.repeats}), "
                f"fraud model {self.transactions.version} {stats}"
                + (f", calibration {models.calibration_summary()}" if models is not None else "")
                + f", credit model {self.loans.version}")


def batch_linger_s(received: int, settings: Settings) -> float:
    """Seconds to wait for more before processing a batch of ``received`` events: the linger
    when the batch is short of ``batch_max_events`` (a trickle), else none. Each batch has a
    fixed cost (~2 ms of scoring and encoding, and a few broker requests), which at a few
    records per batch would dominate both CPU and latency. The worker's reader and the bench's
    engine latency loop batch by this one rule."""
    if settings.batch_linger_ms <= 0 or received >= settings.batch_max_events:
        return 0.0
    return settings.batch_linger_ms / 1000


def tune_garbage_collector(collect: bool = True) -> None:
    """For a process that runs the driver over many batches: a worker once its long-lived
    state is built; an offline replay just before it builds its driver.

    Each batch allocates ~100k short-lived objects (decoded dicts, strings, rows), which at
    CPython's default threshold of 700 runs the cycle collector hundreds of times per batch,
    and now and then over the whole long-lived heap. The long-lived objects are frozen out of
    collection and young ones collected less often (bench/results has the measurements).

    A forked process passes ``collect=False``: a collection would walk, and write to, every
    object it shares with its parent, copying those pages; the freeze alone moves them out
    of later collections without touching them."""
    import gc

    if collect:
        gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
