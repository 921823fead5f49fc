"""Which fraud model decides, and what its probability means: ``FraudModels``' side of the
model lifecycle (a mixin of :class:`riskstream.detectors.fraud.FraudModels`).

* **Champion and challenger.** The online logistic regression decides until the retrained
  trees (``detectors.retrained``) beat it on the settled decisions of the last 7 days by
  ``promote_margin`` on both AP and Card Precision@100; the trees then decide, and go back to
  the shadow when the logistic regression leads them by as much. Both scores are kept per
  decision in the ring (``_lrscore``, ``_cscore``), so each comparison is of decision-time
  scores on the same decisions.
* **A pinned champion.** An operator can pin the online model or any registered tree version
  (``riskstream models promote|rollback``, through the control topic): ``pin``. Automatic
  promotion then waits until the pin is released (``pin("auto")``).
* **Proof and calibration.** After warm-up the online model scores in shadow until it ranks
  the settled decisions of the judging window (the last week, or back until it holds 50 settled
  frauds, at most 4 weeks) with ROC AUC of at least ``prove_auc``, by the
  scores it gave them and as it is now (``_try_proof``). Then, and once a day of event time,
  each model as it is now is scored on those decisions to fit a Platt scaling
  (``detectors.calibration``); the deciding model's probability goes through it, so that the
  thresholds mean fraud rates.
* **New versions** of the trees go to the worker's registry (``take_new_versions``).

Uses the ring of ``detectors.fraud`` (``_X``, ``_time``, ``_score``, ``_lrscore``,
``_cscore``, ``_entity``, ``_status``) and ``challenger``, ``ready``, ``min_positives``.
"""

from __future__ import annotations

import numpy as np

from riskstream.detectors.calibration import PlattCalibration

DAY_MS = 86_400_000
ONLINE, AUTO = "online", "auto"


class ChampionChoice:
    def _init_champion(self, promote_margin: float | None, calibrate: bool, prove_auc: float | None) -> None:
        # promote_margin None: the trees stay in shadow unless pinned.
        self.promote_margin = promote_margin
        self.compare_ms = 7 * DAY_MS
        # Proof and calibration look back a week, or further until the window holds
        # JUDGE_FRAUDS settled frauds (at most ``judge_ms``): chargebacks take weeks, so a
        # week's settled decisions hold few frauds, and a fixed 4 weeks kept a model judged by
        # the days before it learned (docs/model-quality.md, the demo).
        self.judge_ms = 28 * DAY_MS
        self.promoted = False
        self.comparisons: list[dict] = []
        self.pinned: str | None = None  # None: automatic; "online"; or a tree version
        self._pinned_trees = None  # detectors.retrained.RetrainedTrees of the pinned version
        self.calibrate = calibrate
        self.calibrations: dict[str, PlattCalibration] = {}  # "online" / "trees"
        self.calibrated_at_ms: int | None = None
        self._tried_at = (-1, 0, 0)  # (settled frauds, decisions remembered, event time) at the last proof attempt
        # The online model decides once it has proven itself on settled decisions it scored in
        # shadow: ROC AUC at least ``prove_auc`` (None: no bar), and calibrated (with calibration on).
        self.prove_auc = prove_auc
        self.proof: dict | None = None
        self._registered: str | None = None  # the newest tree version handed to the registry
        self._report_delays = np.zeros(0, np.int64)  # the latest frauds' event-to-label times, ms
        self._report_at = np.zeros(0, np.int64)  # when each was reported (label time), ms
        self._reports_noted = 0  # all reports noted, kept or not

    # ----- who decides ------------------------------------------------------------------------
    @property
    def deciding(self) -> str:
        """"online", "trees" (the newest retrained trees) or "pinned" (an older tree version)."""
        if self.pinned == ONLINE:
            return ONLINE
        if self.pinned is not None and self._pinned_trees is not None:
            return "pinned"
        c = self.challenger
        if self.pinned is None and self.promoted and c is not None and c.booster is not None:
            return "trees"
        return ONLINE

    def pin(self, version: str, model_text: str | None = None, negative_rate: float = 0.25) -> None:
        """Make ``version`` decide ("online", a tree version with its LightGBM text, or "auto"
        to let the comparisons decide again). Raises ``KeyError`` for a tree version given
        without its text."""
        from riskstream.detectors.retrained import RetrainedTrees

        if version == AUTO:
            self.pinned, self._pinned_trees = None, None
            return
        if version == ONLINE:
            self.pinned, self._pinned_trees = ONLINE, None
            return
        c = self.challenger
        if model_text is None and c is not None and c.version == version and c.booster is not None:
            trees = RetrainedTrees(negative_rate=c.negative_rate)
            trees.booster, trees.version = c.booster, version  # a trained booster is never changed
        elif model_text is None:
            raise KeyError(f"tree version {version} needs its model text")
        else:
            trees = RetrainedTrees(negative_rate=negative_rate)
            trees.load({"model": model_text, "version": version, "next_at_ms": None, "trainings": 0})
        self.pinned, self._pinned_trees = version, trees

    def _champion_version(self) -> str | None:
        kind = self.deciding
        if kind == "pinned":
            return self._pinned_trees.version
        if kind == "trees":
            return self.challenger.version
        return None  # the online model's own version

    @property
    def proven(self) -> bool:
        """Whether the online model decides: warmed up (``ready``), then proven on the settled
        decisions it scored in shadow (``_try_proof``): ranking them well enough, and with
        calibration on calibrated on them, so that its first probabilities already mean fraud
        rates (uncalibrated, they ran 20-80 times too high)."""
        if not self.ready:
            return False
        return self.proof is not None or (not self.calibrate and self.prove_auc is None)

    def _choose(self, X: np.ndarray, online: np.ndarray, trees: np.ndarray | None):
        """(probability that decides, shadow probability, the shadow's version or "")."""
        kind = self.deciding
        if kind == ONLINE:
            probability = self._calibrated(ONLINE, online) if self.proven else np.zeros_like(online)
            if trees is None:
                return probability, None, ""
            return probability, self._calibrated("trees", trees), self.challenger.version
        raw = self._pinned_trees.score(X) if kind == "pinned" else trees
        shadow = self._calibrated(ONLINE, online) if self.proven else None
        return self._calibrated("trees", raw), shadow, (self.online_version if shadow is not None else "")

    def _calibrated(self, model: str, p: np.ndarray) -> np.ndarray:
        cal = self.calibrations.get(model) if self.calibrate else None
        return p if cal is None else cal.apply(p)

    def calibration_summary(self) -> str:
        if not self.calibrate:
            return "off"
        return "; ".join(f"{m} {c.describe()}" for m, c in self.calibrations.items()) or "not fitted yet"

    # ----- the daily schedule: calibration, comparison, training --------------------------------
    def _daily(self) -> None:
        now = self._clock()
        if now is None:
            return
        # A proof attempt scans the ring and scores a sample (~10-30 ms): only on new frauds,
        # and at most once per PROOF_EVERY decisions or day of event time (a trickle of traffic).
        tried_at = self._tried_at
        if self.ready and not self.proven and self.stats["settled_positives"] != tried_at[0] and (
                self.stats["remembered"] - tried_at[1] >= self.PROOF_EVERY or now - tried_at[2] >= DAY_MS):
            self._tried_at = (self.stats["settled_positives"], self.stats["remembered"], now)
            self._try_proof(now)
        if self.calibrated_at_ms is None:
            self.calibrated_at_ms = now
        elif now - self.calibrated_at_ms >= DAY_MS:
            self.calibrated_at_ms = now
            self._fit_calibrations(now)
        self._retrain_if_due()

    def _settled_recent(self, since_ms: int) -> tuple[np.ndarray, np.ndarray]:
        from riskstream.detectors.fraud import LEARNED_NEG, LEARNED_POS  # (fraud imports this module)

        used = self._ring_written()
        status = self._status[:used]
        rows = np.flatnonzero(((status == LEARNED_POS) | (status == LEARNED_NEG)) & (self._time[:used] >= since_ms))
        return rows, (status[rows] == LEARNED_POS).astype(np.int8)

    # The models are judged and calibrated as they are now, on the settled decisions of the
    # judging window: every fraud, and a sample of this many legit ones weighted for all of them.
    JUDGE_FRAUDS = 50
    LEGIT_SAMPLE = 10_000  # two parameters to fit: plenty, and each fit costs half of 20,000
    PROOF_EVERY = 20_000

    def _settled_sample(self, now: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(rows, outcomes, weights) of the judging window (see ``judge_ms``), or None while
        too few have settled to judge."""
        rows, y = self._settled_recent(now - self.judge_ms)
        fraud_times = np.sort(self._time[rows[y == 1]])[::-1]
        if len(fraud_times) >= self.JUDGE_FRAUDS:
            days = -(-(now - int(fraud_times[self.JUDGE_FRAUDS - 1])) // DAY_MS)  # whole days back
            since = now - max(self.compare_ms, days * DAY_MS)
            inside = self._time[rows] >= since
            rows, y = rows[inside], y[inside]
        legit = np.flatnonzero(y == 0)
        if y.sum() < self.min_positives or len(legit) < 200:
            return None
        weight = np.ones(len(rows))
        if len(legit) > self.LEGIT_SAMPLE:
            keep = np.zeros(len(rows), bool)
            keep[np.random.default_rng(len(rows)).choice(legit, self.LEGIT_SAMPLE, replace=False)] = True
            keep[y == 1] = True
            weight[y == 0] = len(legit) / self.LEGIT_SAMPLE
            rows, y, weight = rows[keep], y[keep], weight[keep]
        return rows, y, weight

    def _try_proof(self, now: int) -> None:
        """The online model decides from now on if it ranks the settled decisions of the judging
        window with ROC AUC >= ``prove_auc``, both by the scores it gave them in shadow (its
        record, out of sample) and as it is now (it has learned since), and is calibrated on
        them."""
        from riskstream.detectors.evaluate import roc_auc

        sample = self._settled_sample(now)
        if sample is None:
            return
        rows, y, _ = sample
        record = self._lrscore[rows]
        known = ~np.isnan(record)
        if y[known].sum() < max(self.min_positives, self.JUDGE_FRAUDS):
            return  # judged on frauds it scored in shadow, enough of them to tell
        auc = roc_auc(y[known], record[known])
        now_auc = roc_auc(y, self._online_probability(self._X[rows]))
        if self.prove_auc is not None and not (auc >= self.prove_auc and now_auc >= self.prove_auc):
            return
        self._fit_calibrations(now, sample)
        if self.calibrate and ONLINE not in self.calibrations:
            return
        self.proof = {"at_ms": int(now), "roc_auc": float(auc), "roc_auc_now": float(now_auc),
                      "decisions": int(len(y)), "frauds": int(y.sum()),
                      "window_days": round((now - int(self._time[rows].min())) / DAY_MS, 2)}

    # ----- frauds not reported yet -----------------------------------------------------------------
    # A decision settles as legit after a day, but chargebacks take weeks: the judging window's
    # "legit" decisions hold frauds not reported yet, and a calibration fitted on them as legit
    # gave a half to a fifth of the fraud rate seen later. The calibration takes the share of frauds
    # reported by each age into account (``PlattCalibration.fit``), from recent reporting times.
    REPORT_DELAYS = 5000  # reporting times kept

    def note_reported(self, event_ms: np.ndarray, label_ms: np.ndarray) -> None:
        """Reporting times of frauds just labelled (``learn_from_labels``)."""
        label_ms = np.asarray(label_ms, np.int64)
        delays = np.maximum(label_ms - np.asarray(event_ms, np.int64), 0)
        self._report_delays = np.concatenate([self._report_delays, delays])[-self.REPORT_DELAYS:]
        self._report_at = np.concatenate([self._report_at, label_ms])[-self.REPORT_DELAYS:]
        self._reports_noted += len(delays)

    def reported_share(self, age_ms: np.ndarray, now: int | None = None) -> np.ndarray:
        """The share of frauds reported by each age, 1 while fewer than 50 reports are known.

        The reports seen are those that came in while the engine has been watching: a delay
        d shows only for frauds of the span [start, now - d] (or of the span whose reports
        the kept ones are, when older ones were dropped), so long delays are fewer among
        them than among frauds. Each report counts by the inverse of that span's length
        (frauds occurring at a steady rate). Counted plainly, in the demo's first weeks the
        share came out at about twice the truth for reports under 10 days.
        """
        order = np.argsort(self._report_delays, kind="stable")
        delays = self._report_delays[order]
        if len(delays) < 50:
            return np.ones(len(age_ms))
        weight = np.ones(len(delays))
        start = self.oldest_event_ms
        if now is not None and start is not None:
            since = int(self._report_at.min()) if self._reports_noted > len(delays) else start
            span = np.minimum(now - delays - start, now - since)
            weight = 1.0 / np.maximum(span, DAY_MS)
        cumulative = np.concatenate([[0.0], np.cumsum(weight)])
        return cumulative[np.searchsorted(delays, np.asarray(age_ms, np.int64), side="right")] / cumulative[-1]

    def _fit_calibrations(self, now: int, sample=None) -> None:
        """Platt scalings of the online model and the trees as they are now (not of the scores
        they gave: a model's scale moves as it learns)."""
        if not self.calibrate:
            return
        sample = sample or self._settled_sample(now)
        if sample is None:
            return
        rows, y, weight = sample
        reported = self.reported_share(now - self._time[rows], now)
        X = self._X[rows]
        c = self.challenger
        for model, score in ((ONLINE, lambda: self._online_probability(X) if self.ready else None),
                             ("trees", lambda: c.score(X) if c is not None else None)):
            p = score()
            if p is not None:
                fitted = PlattCalibration.fit(p, y, weight, reported_share=reported)
                if fitted is not None:  # else the calibration in force stays
                    self.calibrations[model] = fitted

    def _retrain_if_due(self) -> None:
        """Hand the challenger the settled decisions of its window when its time has come,
        after comparing it with the online model (promotion, demotion)."""
        c = self.challenger
        now = self._clock()
        if c is None or not c.due(now):
            return
        self._fit_calibrations(now)  # a promoted challenger decides calibrated from its first batch
        rows, y = self._settled_recent(now - max(self.compare_ms, c.window_ms))
        if self.promote_margin is not None:
            recent = (self._time[rows] >= now - self.compare_ms) & ~np.isnan(self._cscore[rows]) \
                & ~np.isnan(self._lrscore[rows])
            self._compare(rows[recent], y[recent], now)
        window = self._time[rows] >= now - c.window_ms
        c.train(self._X[rows[window]], y[window], now)

    def take_new_versions(self) -> list[dict]:
        """The newest tree version, with its LightGBM text, once, for the registry (a
        background training is picked up once it has finished)."""
        c = self.challenger
        if c is None or c.booster is None or c.version == self._registered:
            return []
        self._registered = c.version
        return [{"version": c.version, **c.last_training, "window_days": c.window_ms / DAY_MS,
                 "negative_rate": c.negative_rate, "comparison": self.comparisons[-1] if self.comparisons else None,
                 "model": c.booster.model_to_string()}]

    def _compare(self, rows: np.ndarray, y: np.ndarray, now: int) -> None:
        """The online model against the trees on the same settled decisions (their
        decision-time scores): the trees decide once they lead on both AP and CP@100 by the
        margin, and go back to the shadow once the online model leads them by as much."""
        from riskstream.detectors.evaluate import average_precision, card_precision_at_k

        if y.sum() < self.min_positives or y.all():
            return
        day, card = self._time[rows] // DAY_MS, self._entity[rows]
        result = {"at_ms": now, "decisions": int(len(y)), "frauds": int(y.sum())}
        for name, score in (("champion", self._lrscore[rows]), ("challenger", self._cscore[rows])):
            result[name] = {"average_precision": average_precision(y, score),
                            "card_precision_at_100": card_precision_at_k(day, card, score, y, k=100)}
        c, l, m = result["challenger"], result["champion"], self.promote_margin
        if not self.promoted:
            self.promoted = all(c[k] >= l[k] + m for k in c)
        elif all(l[k] >= c[k] + m for k in c):
            self.promoted = False
        result["promoted"] = self.promoted
        self.comparisons.append(result)
