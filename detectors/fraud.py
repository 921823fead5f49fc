"""``FraudModels``: the fraud lifecycle the transaction processor calls. It scores batches with
the detectors of ``detectors.fraud_detectors`` (a River logistic regression and a robust
anomaly score), remembers what was scored, and learns from labels and maturity.

Label semantics (``FraudModels``): legit transactions mostly never get a label. A remembered
decision older than ``maturity_ms`` of event time (measured against the newest event time
seen) without a positive label is learned as a negative, as production systems learn from
delayed chargebacks; a positive learns when its label arrives, from the features remembered at
decision time, never from features recomputed at label time.

>>> import numpy as np
>>> m = FraudModels(feature_names=["amount", "tx_count_1d"], capacity=1000)
>>> X = np.array([[12.0, 1.0], [900.0, 9.0]], dtype=np.float32)
>>> s = m.score(X, ["amount", "tx_count_1d"])
>>> s.probability.shape, s.anomaly.dtype.name
((2,), 'float32')
>>> m.remember(np.array(["t1", "t2"]), X, np.array([0, 1000]))
>>> m.learn_from_labels(np.array(["t2", "nope"]), np.array([1, 1]), np.array([5000, 5000]))
1
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from riskstream.detectors.drift import ADWIN

from riskstream.detectors.base import Detector, DetectorError
from riskstream.detectors.fraud_detectors import (
    LinearFraudDetector, RobustZAnomalyDetector, hash_ids, sigmoid, signed_log1p,
)
from riskstream.detectors.fraud_monitoring import OutcomeMonitoring
from riskstream.detectors.fraud_checkpoint import FraudCheckpoints
from riskstream.detectors.champion import ChampionChoice
from riskstream.detectors.id_index import index_insert, index_probe
from riskstream.schemas.events import DAY_MS

# A decision with no chargeback after a day is learned as legit; a later chargeback corrects it
# (learned again as a positive). Why not the week or more a chargeback can take: negatives
# learned only after a week leave the model a week of positives from days it has no negatives
# of yet: it learned "weekend = fraud" on its second Saturday and flagged most of that day.
# docs/model-quality.md has what bench/fraud_quality.py measured for both.
MATURITY_MS = 1 * DAY_MS


# --------------------------------------------------------------------------------------
# FraudModels: what the worker calls
# --------------------------------------------------------------------------------------
@dataclass
class FraudScores:
    """Scores for one batch. ``contributions`` are logit contributions (n, d)."""

    probability: np.ndarray
    anomaly: np.ndarray
    contributions: np.ndarray
    values: np.ndarray
    feature_names: tuple[str, ...]
    challenger: np.ndarray | None = None  # the retrained trees' probability (odds corrected, not calibrated)
    online: np.ndarray | None = None  # the online logistic regression's probability (not calibrated)
    shadow: np.ndarray | None = None  # the model that does not decide, calibrated as it would decide
    shadow_version: str = ""

    def top_indices(self, k: int = 3) -> np.ndarray:
        """Feature indices of the k largest contributions per row, largest first: int (n, k)."""
        k = min(k, self.contributions.shape[1])
        part = np.argpartition(-self.contributions, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(self.contributions, part, axis=1).argsort(axis=1)[:, ::-1]
        return np.take_along_axis(part, order, axis=1)

    def top_contributions(self, i: int, k: int = 3) -> list[str]:
        """Readable reasons for row i: the features that pushed the fraud logit up the most,
        e.g. ``"amount=1.25e+03 pushed +1.9"``. Features that pushed down are not reasons."""
        row = self.contributions[i]
        k = min(k, len(row))
        idx = np.argpartition(-row, k - 1)[:k]
        idx = idx[np.argsort(-row[idx])]
        return [f"{self.feature_names[j]}={self.values[i, j]:.4g} pushed {row[j]:+.1f}"
                for j in idx if row[j] > 0.05]


# Ring-buffer slot states.
EMPTY, PENDING, LEARNED_NEG, LEARNED_POS, POSITIVE_WAITING = 0, 1, 2, 3, 4


class FraudModels(OutcomeMonitoring, ChampionChoice, FraudCheckpoints, Detector):
    """Score batches, remember what was scored, learn from labels and maturity (on a schedule
    of its own, see ``learn_every``).

    On the detector contract: ``score_many`` is the fraud probability (0 while warming up),
    and ``learn_many(X, y)`` takes rows whose outcome is known now: they are remembered and
    settled at once, and the model learns them in the same call.

    Pure: no I/O, no clocks except where ``measured_at`` is left to default in ``quality``.
    State is bounded: a ring buffer of ``capacity`` decisions (float32 features, decision-time
    score, event time, ids hashed to uint64) and a quality history of ``quality_capacity``
    settled (score, label) pairs. A decision overwritten before it settles is counted in
    ``stats["evicted_unsettled"]``: size ``capacity`` to cover ``maturity_ms`` of traffic.
    """

    def __init__(self, feature_names: Sequence[str] | None = None, *, capacity: int = 1_000_000,
                 maturity_ms: int = MATURITY_MS, negative_keep_rate: float = 0.1,
                 positive_weight: float = 1.0, learning_rate: float = 0.05,
                 quality_capacity: int = 500_000, drift_delta: float = 0.002, seed: int = 0,
                 min_positives: int = 20, min_negatives: int = 200, held_negatives: int = 100_000,
                 learn_every: int = 5000, learn_every_ms: int = DAY_MS, positives_wait: bool = False,
                 challenger=None, promote_margin: float | None = None, calibrate: bool = False,
                 prove_auc: float | None = None):
        self.capacity = int(capacity)
        # When the model learns: once per ``learn_every`` decisions remembered (or per
        # ``learn_every_ms`` of event time, for a trickle of traffic), whatever settled since
        # goes to River in two calls, the labels' rows then the matured negatives. Not per
        # batch: each River call is at least one Adam step of about the same size whatever its
        # rows, so learning each batch's few labels in a call of their own made the model
        # depend on how the stream was batched: a worker at a few hundred transactions a
        # second, with small batches, stepped up and declined several times more than the
        # bench's 5,000-transaction batches. 5,000 is the batch the model's figures were
        # measured with. ``learn_every=1`` learns at every call (the batch-dependent schedule).
        self.learn_every = int(learn_every)
        self.learn_every_ms = int(learn_every_ms)
        self._queued: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"labels": [], "matured": []}
        self._since_update = 0  # decisions remembered since the model last learned
        self._updated_at_ms: int | None = None  # event time of that update
        # Warm-up. A logistic regression fed one class has nothing to separate: on negatives
        # alone (no labels flowing yet, the first week of matured decisions) Adam's
        # per-coordinate steps random-walk the weights: clean traffic drifts up into step-up
        # and review within a day, and the model still ranks fraud worse than chance after its
        # first chargebacks. So
        # negatives settled before any positive are held (the newest ``held_negatives``) and
        # learned mixed with the first positives, and the probability counts for nothing (0:
        # decisions rest on the rules) until ``min_positives`` and ``min_negatives`` outcomes
        # have settled. Positives first is left alone: chargebacks and analyst verdicts usually
        # come before the first negatives mature, and holding them measured worse in
        # bench/fraud_quality.py.
        self.min_positives = int(min_positives)
        self.min_negatives = int(min_negatives)
        self.held_negatives = int(held_negatives)
        self._held: list[np.ndarray] = []
        self.maturity_ms = int(maturity_ms)
        self.positives_wait = bool(positives_wait)
        # detectors.retrained.RetrainedTrees: trained on the ring's settled decisions, in shadow
        # until it wins a comparison or is pinned (detectors.champion); ``calibrate``: Platt
        # scaling of the deciding model on settled decisions.
        self.challenger = challenger
        self._init_champion(promote_margin, calibrate, prove_auc)
        self.quality_capacity = int(quality_capacity)
        self._params = dict(negative_keep_rate=negative_keep_rate, positive_weight=positive_weight,
                            learning_rate=learning_rate, seed=seed)
        self.drift_delta = drift_delta
        self.feature_names: tuple[str, ...] | None = None
        self.newest_event_ms: int | None = None
        self.oldest_event_ms: int | None = None  # since when the model has watched (reporting times)
        # Event-time watermark from the caller (the slowest input partition): while several
        # partitions catch up unevenly, "a day old" must mean old for all of them, or
        # frauds whose chargebacks are still to come would be learned as negatives.
        self.watermark_ms: int | None = None
        self.stats = {"remembered": 0, "labels_applied": 0, "labels_missed": 0, "matured_negatives": 0,
                      "evicted_unsettled": 0, "duplicate_labels": 0, "settled_positives": 0,
                      "settled_negatives": 0}
        self._alerts: list[dict] = []
        self._adwin = {"fraud_score": ADWIN(delta=drift_delta), "legit_score": ADWIN(delta=drift_delta)}
        self._column_maps: dict[tuple[str, ...], np.ndarray | None] = {}
        self._learned_rows = 0  # rows given to learn_many, for their ids
        if feature_names is not None:
            self._init_features(tuple(feature_names))

    name = "fraud_models"

    # ----- the detector contract --------------------------------------------------------------
    @property
    def n_learned(self) -> int:
        return self.linear.n_learned if self.feature_names is not None else 0

    def score_many(self, X: np.ndarray) -> np.ndarray:
        X = self.check_matrix(X)
        return np.asarray(self.score(X, self.feature_names).probability, dtype=np.float32)

    def learn_many(self, X: np.ndarray, y: np.ndarray | None) -> None:
        if y is None:
            raise DetectorError(f"{self.name} is supervised: learn_many needs labels")
        X = self.check_matrix(X)
        n = len(X)
        if n == 0:
            return
        ids = np.array([f"learn_many:{self._learned_rows + i}" for i in range(n)], dtype=object)
        self._learned_rows += n
        at = self.newest_event_ms or 0
        self.remember(ids, X, np.full(n, at, np.int64))
        self.learn_from_labels(ids, np.asarray(y, dtype=np.int8), np.full(n, at, np.int64))
        self._learn_queued(force=True)

    def _state(self) -> object:
        return self.checkpoint()

    def _load(self, state: object) -> None:
        self.restore(state)

    def _init_features(self, names: tuple[str, ...]) -> None:
        self.feature_names = names
        d, cap, qcap = len(names), self.capacity, self.quality_capacity
        self.linear = LinearFraudDetector(names, scale_from_traffic=True, **self._params)
        self.anomaly = RobustZAnomalyDetector(names)
        # Ring buffer of decisions, in insertion order; `_head` is the next slot to write.
        self._X = np.zeros((cap, d), np.float32)
        self._time = np.zeros(cap, np.int64)
        self._score = np.zeros(cap, np.float32)
        self._cscore = np.full(cap, np.nan, np.float32)  # the challenger's decision-time probability
        self._lrscore = np.full(cap, np.nan, np.float32)  # the online model's, uncalibrated
        self._key = np.zeros(cap, np.uint64)
        self._entity = np.zeros(cap, np.uint64)
        self._status = np.zeros(cap, np.int8)
        self._head = 0
        self._cursor = 0  # oldest slot not yet checked for maturity
        self._span = 0  # slots from the cursor up to the head
        self._new_id_index()
        # Settled (decision-time score, label) pairs for quality, a ring as well.
        self._q_time = np.zeros(qcap, np.int64)
        self._q_score = np.zeros(qcap, np.float32)
        self._q_y = np.zeros(qcap, np.int8)
        self._q_entity = np.zeros(qcap, np.uint64)
        self._q_key = np.zeros(qcap, np.uint64)
        # Where each ring slot's outcome went in the quality ring (-1: not settled, or unknown in
        # a checkpoint from before it was kept), so a late chargeback finds the negative it
        # corrects without searching the whole quality ring.
        self._q_at = np.full(cap, -1, np.int32)  # 4 MB a million decisions
        self._q_n = 0

    @property
    def ready(self) -> bool:
        """Whether the supervised probability is used (see ``min_positives``)."""
        return (self.stats["settled_positives"] >= self.min_positives
                and self.stats["settled_negatives"] >= self.min_negatives)

    @property
    def version(self) -> str:
        """The version of the model that decides (detectors.champion)."""
        return self._champion_version() or self.online_version

    @property
    def online_version(self) -> str:
        if self.feature_names is None:
            return "fraud-untrained"
        if not self.ready:  # decision rows say the model had no say, and how far it is
            return (f"fraud-warming-up-pos{self.stats['settled_positives']}of{self.min_positives}"
                    f"-neg{self.stats['settled_negatives']}of{self.min_negatives}")
        if not self.proven:  # trained, scoring in shadow until it has proven itself
            return f"fraud-proving-lr{self.linear.n_learned}"
        return f"fraud-lr{self.linear.n_learned}-z{self.anomaly.n_learned}"

    # ----- scoring ----------------------------------------------------------------------------
    def _columns(self, X: np.ndarray, feature_names: Sequence[str]) -> np.ndarray:
        names = tuple(feature_names)
        if self.feature_names is None:
            self._init_features(names)
        if names not in self._column_maps:
            if names == self.feature_names:
                self._column_maps[names] = None
            else:
                missing = set(self.feature_names) - set(names)
                if missing:
                    raise DetectorError(f"FraudModels: features missing from the batch: {sorted(missing)}")
                self._column_maps[names] = np.array([names.index(n) for n in self.feature_names])
        cols = self._column_maps[names]
        X = np.asarray(X, dtype=np.float32)
        return X if cols is None else X[:, cols]

    def _online_probability(self, X: np.ndarray) -> np.ndarray:
        """The online logistic regression's own probability for rows in model column order."""
        return sigmoid(self.linear.contributions(X).sum(axis=1) + self.linear.offset_)

    def score(self, X: np.ndarray, feature_names: Sequence[str]) -> FraudScores:
        X = self._columns(X, feature_names)
        contrib = self.linear.contributions(X)
        if self.ready:
            online = sigmoid(contrib.sum(axis=1) + self.linear.offset_)
        else:  # computed all the same: warm-up costs what scoring costs
            online = np.zeros(len(X), np.float32)
        challenger = self.challenger.score(X) if self.challenger is not None else None
        probability, shadow, shadow_version = self._choose(X, online, challenger)
        return FraudScores(probability, self.anomaly.score_many(X), contrib, X, self.feature_names, challenger,
                           online, shadow, shadow_version)

    # ----- event id -> ring slot ------------------------------------------------------------------
    # An open-addressing table of (event-id hash, slot) rows, probed by the feature engine's
    # jitted kernels: a Python dict cost ~1 µs per event to fill and to prune. Nothing is ever
    # deleted: when the ring overwrites a slot, the row that pointed at it goes stale, and a
    # lookup checks the slot's stored hash (`_key`) so a stale row never answers for the id
    # now living there. Stale rows still lengthen probe chains, so once rows in use pass
    # ID_INDEX_MAX_LOAD the table is rebuilt from the ring (O(capacity), every >= 0.2
    # capacity events: a few ns per event amortised).
    ID_INDEX_MAX_LOAD = 0.7

    def _new_id_index(self) -> None:
        rows = 1 << max(4, (2 * self.capacity - 1).bit_length())  # >= 2 rows per slot
        self._id_index = np.zeros((rows, 2), np.int64)
        self._id_index[:, 1] = -1
        self._id_rows = 0  # rows in use, live or stale (an upper bound: re-inserts count twice)

    def _rebuild_id_index(self) -> None:
        self._new_id_index()
        # Oldest first, so that of two decisions with the same id the newest answers, as it
        # did when it was indexed.
        order = (self._head + np.arange(self.capacity)) % self.capacity
        order = order[(self._status[order] != EMPTY) & (self._key[order] != 0)]
        index_insert(self._id_index, self._key[order].view(np.int64), order)
        self._id_rows = len(order)

    def _index_ids(self, keys: np.ndarray, slots: np.ndarray) -> None:
        """Index a batch just written to the ring (hash 0, an empty id, is never indexed)."""
        if self._id_rows + len(keys) > self.ID_INDEX_MAX_LOAD * len(self._id_index):
            self._rebuild_id_index()  # the ring already holds the batch
            return
        named = keys != 0
        index_insert(self._id_index, keys[named].view(np.int64), slots[named])
        self._id_rows += int(np.count_nonzero(named))

    def slots_of(self, keys: np.ndarray) -> np.ndarray:
        """Ring slots of remembered event-id hashes, -1 where unknown or overwritten."""
        slots = np.empty(len(keys), np.int64)
        index_probe(np.ascontiguousarray(keys).view(np.int64), self._id_index, slots)
        found = np.flatnonzero(slots >= 0)
        stale = found[self._key[slots[found]] != keys[found]]
        slots[stale] = -1
        slots[slots < 0] = -1
        return slots

    def _ring_pieces(self, start: int, n: int) -> list[tuple[slice, slice]]:
        """n slots from ``start`` as at most two (ring slice, batch slice) pairs: contiguous
        copies instead of fancy indexing by slot."""
        first = min(n, self.capacity - start)
        pieces = [(slice(start, start + first), slice(0, first))]
        if first < n:
            pieces.append((slice(0, n - first), slice(first, n)))
        return pieces

    # ----- remembering decisions ---------------------------------------------------------------
    def remember(self, event_ids: np.ndarray, X: np.ndarray, event_time_ms: np.ndarray, *,
                 feature_names: Sequence[str] | None = None, scores: np.ndarray | None = None,
                 entity_ids: np.ndarray | None = None, challenger_scores: np.ndarray | None = None,
                 online_scores: np.ndarray | None = None) -> None:
        """Keep the decision-time features of a scored batch until its label or maturity.

        ``scores``: the probabilities given at decision time (recomputed if omitted; identical
        when nothing was learned in between). ``entity_ids``: card ids, for Card Precision@100
        in ``quality()`` (without them each event counts as its own card). Also updates the
        anomaly statistics with the batch and learns matured negatives.
        """
        X = self._columns(X, feature_names or self.feature_names or ())
        n = len(X)
        if n == 0:
            return
        if n > self.capacity:
            raise DetectorError(f"batch of {n} exceeds ring capacity {self.capacity}")
        keys = hash_ids(event_ids)
        times = np.asarray(event_time_ms, dtype=np.int64)
        if not self.ready:  # no model opinion at decision time: kept out of quality and drift
            scores = online_scores = np.full(n, np.nan, np.float32)
        elif scores is None or online_scores is None:
            scored = self.score(X, self.feature_names)
            scores = scored.probability if scores is None else scores
            online_scores = scored.online if online_scores is None else online_scores
        if not self.proven and self.deciding == "online":  # scored in shadow only, to calibrate
            scores = np.full(n, np.nan, np.float32)
        scores = np.asarray(scores, dtype=np.float32)
        entity = hash_ids(entity_ids) if entity_ids is not None else keys
        # The ring overwrites the oldest decisions; their id rows go stale (see `slots_of`).
        for ring, rows in self._ring_pieces(self._head, n):
            self.stats["evicted_unsettled"] += int(np.count_nonzero((self._status[ring] == PENDING)
                                                                    | (self._status[ring] == POSITIVE_WAITING)))
            self._X[ring] = X[rows]
            self._time[ring] = times[rows]
            self._score[ring] = scores[rows]
            self._cscore[ring] = np.nan if challenger_scores is None else challenger_scores[rows]
            self._lrscore[ring] = online_scores[rows]
            self._key[ring] = keys[rows]
            self._entity[ring] = entity[rows]
            self._status[ring] = PENDING
            self._q_at[ring] = -1
        slots = (self._head + np.arange(n)) % self.capacity
        self._head = int((self._head + n) % self.capacity)  # before indexing: a rebuild reads from the oldest
        self._index_ids(keys, slots)
        if self._span + n > self.capacity:  # overwrote the oldest unchecked slots
            self._cursor, self._span = self._head, self.capacity
        else:
            self._span += n
        newest, oldest = int(times.max()), int(times.min())
        self.newest_event_ms = newest if self.newest_event_ms is None else max(self.newest_event_ms, newest)
        self.oldest_event_ms = oldest if self.oldest_event_ms is None else min(self.oldest_event_ms, oldest)
        self.stats["remembered"] += n
        T = signed_log1p(X)  # once for both: the log is a fifth of the statistics' cost
        self.linear.observe_signed_log(T)
        self.anomaly.learn_signed_log(T)
        self._since_update += n
        if self._updated_at_ms is None:
            self._updated_at_ms = self._clock()
        if self.learn_every <= 1 or not self._update_due():
            self._learn_matured(min_rows=2048)  # settles them (quality, drift) in a few large pieces
        self._learn_queued()
        self._daily()

    def _clock(self) -> int:
        """Event time "now" for maturity: the newest event seen, held back by the watermark."""
        if self.watermark_ms is None:
            return self.newest_event_ms
        return min(self.newest_event_ms, self.watermark_ms)

    def _learn_matured(self, min_rows: int) -> int:
        """Learn as negatives the pending decisions older than the maturity horizon."""
        if self.newest_event_ms is None:
            return 0
        if self._span == 0:
            return 0
        stop = self._mature_prefix(self._clock() - self.maturity_ms)
        if stop < min_rows:
            return 0
        slots = (self._cursor + np.arange(stop)) % self.capacity
        status = self._status[slots]
        slots, y = slots[(status == PENDING) | (status == POSITIVE_WAITING)], (status == POSITIVE_WAITING)
        y = y[(status == PENDING) | (status == POSITIVE_WAITING)].astype(np.int8)
        self._cursor = int((self._cursor + stop) % self.capacity)
        self._span -= stop
        if len(slots) == 0:
            return 0
        self._settle(slots, y, "matured")
        self.stats["matured_negatives"] += int(len(y) - y.sum())
        return len(slots)

    def _mature_prefix(self, cutoff: int) -> int:
        """Slots from the cursor, in ring order, before the first decision newer than cutoff.

        Insertion order is close to event-time order: stop at the first event not yet mature
        (a few late events wait a little longer; none is learned early). The scan reads
        growing chunks from the cursor, so it costs about what matured, not the whole span
        (~0.7 capacity of pending decisions once the ring covers the maturity horizon)."""
        done, chunk = 0, 4096
        while done < self._span:
            start = (self._cursor + done) % self.capacity
            n = min(chunk, self._span - done, self.capacity - start)
            late = self._time[start:start + n] > cutoff
            if late.any():
                return done + int(late.argmax())
            done += n
            chunk *= 2
        return self._span

    def _settle(self, slots: np.ndarray, y: np.ndarray, source: str) -> None:
        """Record quality and drift of settled decisions and queue their decision-time features
        to be learned (``source``: "labels" or "matured", see ``learn_every``)."""
        positives = int(np.count_nonzero(y))
        if positives == 0 and self.stats["settled_positives"] == 0 and self.min_positives > 0:
            self._hold_negatives(self._X[slots])
        elif self._held:  # the first positives: learned mixed with the negatives held so far
            held = np.concatenate(self._held)[-self.held_negatives:]
            X_all = np.concatenate([held, self._X[slots]])
            y_all = np.concatenate([np.zeros(len(X_all) - len(y), np.int8), y])
            self._held = []
            self.linear.learn_many(X_all, y_all)
        else:
            self._queued[source].append((self._X[slots], y))
        self.stats["settled_positives"] += positives
        self.stats["settled_negatives"] += len(y) - positives
        self._status[slots] = np.where(y == 1, LEARNED_POS, LEARNED_NEG)
        self._record_quality(slots, y)
        scored = ~np.isnan(self._score[slots])  # decided while warming up: no score to judge
        slots, y = slots[scored], y[scored]
        p = self._score[slots]
        pos = y == 1
        # Two homogeneous streams for drift: positives and matured negatives arrive at different
        # times and rates, and one mixed error stream would "drift" whenever that mix changes.
        self.feed_drift("fraud_score", 1.0 - p[pos], "confirmed fraud now scores lower at decision time (missed fraud rising)")
        self.feed_drift("legit_score", p[~pos], "legit transactions now score higher (false alarms rising)")

    def _hold_negatives(self, X: np.ndarray) -> None:
        """Keep the newest ``held_negatives`` negatives settled before any positive: whole
        batches, the oldest dropped while the rest still hold enough. Never one array: copying
        the whole hold (100k rows) per matured batch was a third of an offline replay without
        labels. ``X`` is kept as it is (the caller's fancy-indexed copy)."""
        self._held.append(X)
        held = sum(map(len, self._held))
        while held - len(self._held[0]) >= self.held_negatives:
            held -= len(self._held.pop(0))

    # ----- labels -----------------------------------------------------------------------------
    def learn_from_labels(self, event_ids: np.ndarray, is_positive: np.ndarray, label_time_ms: np.ndarray) -> int:
        """Learn from labels using ONLY the features remembered at decision time.

        Returns how many remembered decisions settled in this call (labels applied plus
        matured negatives). Ids never remembered (or already evicted) count in
        ``stats["labels_missed"]``. A positive label for a decision already learned as a
        matured negative is learned again as a positive (a late chargeback corrects it).
        """
        if self.feature_names is None:
            self.stats["labels_missed"] += len(event_ids)
            return 0
        keys = hash_ids(event_ids)
        y = np.asarray(is_positive).astype(np.int8)
        label_ms = np.broadcast_to(np.asarray(label_time_ms, np.int64), y.shape)
        slots = self.slots_of(keys)
        found = slots >= 0
        self.stats["labels_missed"] += int((~found).sum())
        slots, y, label_ms = slots[found], y[found], label_ms[found]
        # First label per event in this call wins for duplicates; positives take precedence.
        order = np.lexsort((-y, slots))
        slots, y, label_ms = slots[order], y[order], label_ms[order]
        first = np.r_[True, slots[1:] != slots[:-1]] if len(slots) else np.zeros(0, bool)
        slots, y, label_ms = slots[first], y[first], label_ms[first]
        status = self._status[slots]
        fresh = status == PENDING
        correction = (status == LEARNED_NEG) & (y == 1)
        self.stats["duplicate_labels"] += int((~fresh & ~correction).sum())
        if correction.any():
            self._drop_quality(slots[correction])
        if self.positives_wait:
            # A fraud label on a decision not yet mature waits for it: frauds and legit
            # transactions of the same days are then learned together.
            waiting = fresh & (y == 1) & (self._time[slots] > self._clock() - self.maturity_ms)
            self._status[slots[waiting]] = POSITIVE_WAITING
            fresh &= ~waiting
        learn = fresh | correction
        reported = learn & (y == 1)
        self.note_reported(self._time[slots[reported]], label_ms[reported])
        settled = 0
        if learn.any():
            self._settle(slots[learn], y[learn], "labels")
            settled = int(learn.sum())
            self.stats["labels_applied"] += settled
        settled += self._learn_matured(min_rows=1)
        self._learn_queued()
        return settled

    def learn_matured(self) -> int:
        """Settle every decision past the maturity horizon as a negative now (``remember``
        waits until a few thousand are due); the model learns them on its schedule."""
        settled = self._learn_matured(min_rows=1)
        self._learn_queued()
        return settled

    def _update_due(self) -> bool:
        if self.learn_every <= 1 or self._since_update >= self.learn_every:
            return True
        if self._updated_at_ms is None:  # nothing remembered yet
            return False
        return self._clock() - self._updated_at_ms >= self.learn_every_ms

    def _learn_queued(self, force: bool = False) -> None:
        """When an update is due (or ``force``): settle everything matured, then learn what
        settled since the last update in two River calls, the labels' rows first, as a
        5,000-transaction batch would have learned them."""
        if not (force or self._update_due()):
            return
        if self.learn_every > 1:
            self._learn_matured(min_rows=1)
        for source in ("labels", "matured"):
            queued, self._queued[source] = self._queued[source], []
            if queued:
                self.linear.learn_many(np.concatenate([X for X, _ in queued]),
                                           np.concatenate([y for _, y in queued]))
        self._since_update %= max(1, self.learn_every)  # the remainder counts: on average every learn_every
        self._updated_at_ms = self._clock() if self.newest_event_ms is not None else None

    @property
    def queued_rows(self) -> int:
        """Settled decisions waiting for the next scheduled update of the model."""
        return sum(len(y) for source in self._queued.values() for _, y in source)

    @property
    def id_index_load(self) -> tuple[int, int]:
        """(rows in use, live or stale; rows in all) of the event-id index."""
        return self._id_rows, len(self._id_index)

    def state_bytes(self) -> int:
        """Memory held by the ring, the quality history and the id index."""
        if self.feature_names is None:
            return 0
        arrays = (self._X, self._time, self._score, self._key, self._entity, self._status,
                  self._q_time, self._q_score, self._q_y, self._q_entity, self._q_key, self._id_index)
        return sum(a.nbytes for a in arrays)
