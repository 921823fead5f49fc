"""``FraudModels``' checkpoints: everything needed to continue, as a pickle of its state and
the written part of its ring (a mixin of :class:`riskstream.detectors.fraud.FraudModels`)."""

from __future__ import annotations

import pickle

import numpy as np

from riskstream.detectors.base import PICKLE_PROTOCOL


class FraudCheckpoints:
    # ----- checkpoints ------------------------------------------------------------------------
    _RING_ARRAYS = ("_X", "_time", "_score", "_cscore", "_lrscore", "_key", "_entity", "_status", "_q_at")
    _QUALITY_ARRAYS = ("_q_time", "_q_score", "_q_y", "_q_entity", "_q_key")

    def _ring_written(self) -> int:
        """Ring slots written so far: all of them once the ring has wrapped."""
        if self._head and not self._time[self._head:].any():
            return self._head
        return self.capacity if self._time.any() else 0

    def checkpoint(self) -> bytes:
        """Everything needed to continue: models, remembered decisions, quality, drift state.
        A pickle: restore only checkpoints riskstream wrote (see ``detectors.base``)."""
        state = {"feature_names": self.feature_names, "newest_event_ms": self.newest_event_ms,
                 "stats": dict(self.stats), "adwin": self._adwin, "alerts": self._alerts,
                 "config": (self.capacity, self.maturity_ms, self.quality_capacity, self._params),
                 "warm_up": (self.min_positives, self.min_negatives, self.held_negatives, self._held),
                 "learning": (self.learn_every, self.learn_every_ms, self._queued, self._since_update,
                              self._updated_at_ms),
                 "challenger": self.challenger.state() if self.challenger is not None else None,
                 "promotion": (self.promote_margin, self.promoted, self.comparisons),
                 "calibration": (self.calibrations, self.calibrated_at_ms, self.proof),
                 "report_delays": self._report_delays,
                 "reports": (self._report_at, self._reports_noted, self.oldest_event_ms)}
        if self.feature_names is not None:
            state.update({
                "supervised": self.linear.checkpoint(), "anomaly": self.anomaly.checkpoint(),
                "head": self._head, "cursor": self._cursor, "span": self._span, "q_n": self._q_n,
                # The slots written so far, not the whole preallocated ring (a million rows of
                # 36 float32 features is 191 MB; a worker's stop writes this checkpoint).
                "arrays": {**{k: getattr(self, k)[:self._ring_written()] for k in self._RING_ARRAYS},
                           **{k: getattr(self, k)[:min(self._q_n, self.quality_capacity)]
                              for k in self._QUALITY_ARRAYS}},
            })
        return pickle.dumps(state, protocol=PICKLE_PROTOCOL)

    def restore(self, blob: bytes) -> None:
        state = pickle.loads(blob)  # our own checkpoints only
        self.capacity, self.maturity_ms, self.quality_capacity, self._params = state["config"]
        self.feature_names = None
        self._column_maps = {}
        if state["feature_names"] is not None:
            self._init_features(tuple(state["feature_names"]))
            self.linear.restore(state["supervised"])
            self.anomaly.restore(state["anomaly"])
            for k, v in state["arrays"].items():
                getattr(self, k)[:len(v)] = v  # the written prefix; the rest stays as new
            self._head, self._cursor, self._q_n = state["head"], state["cursor"], state["q_n"]
            self._span = state["span"]
            # Checkpoints written before ids were hashed with `id_hashes` (pandas SipHash)
            # hold keys no label will match: their decisions still mature as negatives, but
            # their labels count as missed.
            self._rebuild_id_index()
        self.newest_event_ms = state["newest_event_ms"]
        (self.min_positives, self.min_negatives, self.held_negatives,
         self._held) = state.get("warm_up", (self.min_positives, self.min_negatives, self.held_negatives, []))
        (self.learn_every, self.learn_every_ms, self._queued, self._since_update,
         self._updated_at_ms) = state.get("learning", (self.learn_every, self.learn_every_ms,
                                                       {"labels": [], "matured": []}, 0, None))
        self.stats = state["stats"]
        if "settled_positives" not in self.stats:
            # Checkpoints from before the warm-up count: what the quality history settled is
            # the best record left (a model restored from one is not sent back to warm up).
            n = min(self._q_n, self.quality_capacity) if state["feature_names"] is not None else 0
            positives = int(np.count_nonzero(self._q_y[:n])) if n else 0
            self.stats["settled_positives"] = positives
            self.stats["settled_negatives"] = n - positives
        self._adwin = state["adwin"]
        self._alerts = state["alerts"]
        if self.challenger is not None and state.get("challenger"):
            self.challenger.load(state["challenger"])
        self.promote_margin, self.promoted, self.comparisons = state.get(
            "promotion", (self.promote_margin, False, []))
        self.calibrations, self.calibrated_at_ms, self.proof = state.get("calibration", ({}, None, None))
        self._report_delays = state.get("report_delays", np.zeros(0, np.int64))
        self._report_at, self._reports_noted, self.oldest_event_ms = state.get(
            "reports", (np.zeros(len(self._report_delays), np.int64), len(self._report_delays), None))
