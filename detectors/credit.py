"""Probability of default of a loan application, learned from outcomes that come months later.

Features of an application (:meth:`PdModel.features`):

* the ratios lenders read, when their parts are there: debt-to-income, payment-to-income
  (the monthly instalment of the requested amount over monthly income) and loan-to-income;
* the amounts the engine knows (``amount``, ``income``, ``existing_debt`` as log amounts,
  ``term_months``) and every other numeric attribute, standardised;
* every text attribute, one-hot by ``name=value``; past ``max_categories`` values of one
  attribute, the rest share ``name=other``.

A missing value contributes nothing. Numbers are standardised with River's ``StandardScaler``,
which learns from every application scored; a fit freezes its means and spreads, so that its
weights and the scale they were fitted on stay together until the next fit.

Estimation: logistic regression, maximum a posteriori under a Gaussian prior centred on a
scorecard (an intercept at ``prior_pd``, weights on the three ratios, zero elsewhere),
re-estimated by Newton's method on the outcomes learned so far (up to ``max_outcomes``, the
newest kept) once ``refit_every`` new ones have come. Before any outcome the prior alone
decides; each outcome moves the model. One SGD step per outcome (River's
``LogisticRegression.learn_one``) learns less from the same outcomes; the credit bench
prints both (``python -m riskstream.bench.credit_quality``).

>>> m = PdModel()
>>> p, reasons = m.score_rows([
...     {"amount": 5000, "income": 60000, "term_months": 36, "existing_debt": 6000, "attributes": {}},
...     {"amount": 30000, "income": 30000, "term_months": 24, "existing_debt": 21000, "attributes": {}}])
>>> bool(p[0] < 0.05 < 0.3 < p[1]), reasons[0], reasons[1][0]
(True, [], 'payment-to-income 0.50 raises the PD')
"""

from __future__ import annotations

import collections
import math
import pickle
from typing import Any, Mapping, Sequence

import numpy as np
from river import preprocessing

PICKLE_PROTOCOL = 5
RATIO_CAP = 20.0  # an absurd ratio (income near 0) should not dominate the logit
# Scorecard prior: each ratio moves the odds by these factors per unit (+0.1 payment-to-income:
# odds x1.5); other features start at zero and are learned.
PRIOR_WEIGHTS = {"debt_to_income": 1.5, "payment_to_income": 4.0, "loan_to_income": 0.3}
# Ratios of an ordinary application: reasons count how far a ratio sits above these.
RATIO_TYPICAL = {"debt_to_income": 0.3, "payment_to_income": 0.1, "loan_to_income": 0.3}
RATIO_TEXT = {"debt_to_income": "debt-to-income", "payment_to_income": "payment-to-income",
              "loan_to_income": "loan-to-income"}
LOG_AMOUNTS = ("amount", "income", "existing_debt")


def derived_ratios(row: Mapping[str, Any]) -> dict[str, float]:
    """The lender's ratios from the known amounts; those whose parts are missing are left out."""
    def known(name: str) -> float:
        v = row.get(name)
        return math.nan if v is None else float(v)

    amount, income, term, debt = known("amount"), known("income"), known("term_months"), known("existing_debt")
    out = {}
    if income == income and income >= 0:
        yearly = max(income, 1.0)  # zero income: the ratios hit the cap, not infinity
        if debt == debt:
            out["debt_to_income"] = min(max(debt, 0.0) / yearly, RATIO_CAP)
        if amount == amount:
            out["loan_to_income"] = min(amount / yearly, RATIO_CAP)
            if term == term:
                out["payment_to_income"] = min((amount / max(term, 1.0)) / (yearly / 12.0), RATIO_CAP)
    return out


class PdModel:
    """Probability of default with readable reasons; learns from outcomes of remembered
    applications."""

    name = "credit_pd"

    def __init__(self, *, prior_pd: float = 0.05, l2: float = 5.0, intercept_l2: float = 1.0,
                 min_each: int = 5, refit_every: int = 1, max_outcomes: int = 50_000,
                 max_categories: int = 50, remember_capacity: int = 200_000):
        self.prior_pd, self.l2, self.refit_every = prior_pd, l2, refit_every
        # The base rate has a prior too, and no fit comes before ``min_each`` defaults and as
        # many repaid loans: defaults are reported months before loans are repaid, so the
        # first outcomes are all defaults. With the intercept free, the demo's first default
        # put every applicant's PD at 99.9% for three weeks.
        self.intercept_l2, self.min_each = intercept_l2, min_each
        self._both_known = False
        self.max_outcomes, self.max_categories, self.remember_capacity = max_outcomes, max_categories, remember_capacity
        self.scaler = preprocessing.StandardScaler()
        self.categories: dict[str, set[str]] = collections.defaultdict(set)
        self.columns: list[str] = ["intercept", *PRIOR_WEIGHTS]  # feature name per weight
        self.weights = self._prior(len(self.columns))
        self.frozen_scale: dict[str, tuple[float, float]] = {}  # numeric feature -> (mean, std) of the fit
        self.outcomes: list[tuple[dict[str, float | str], int]] = []  # (features as decided, defaulted)
        self._encoded: list[np.ndarray] = []  # outcome rows encoded for the fit (a prefix of the columns)
        self._scaled_at = 0  # outcomes when the scale was last frozen
        self._pending: collections.OrderedDict[str, dict[str, float | str]] = collections.OrderedDict()
        self.n_learned = 0
        self.fits = 0
        self._since_fit = 0

    @property
    def version(self) -> str:
        return f"{self.name}-{self.n_learned}"

    # ----- features ------------------------------------------------------------------------
    def features(self, row: Mapping[str, Any]) -> dict[str, float | str]:
        """Raw features: ratios and numbers as floats, texts as ``name=value`` keys (value 1)."""
        out: dict[str, float | str] = dict(derived_ratios(row))
        for name in LOG_AMOUNTS:
            v = row.get(name)
            if v is not None and v == v:
                out[f"log_{name}"] = math.log1p(max(float(v), 0.0))
        term = row.get("term_months")
        if term is not None and term == term:
            out["term_months"] = float(term)
        for name, value in (row.get("attributes") or {}).items():
            if isinstance(value, str):
                seen = self.categories[name]
                if value not in seen and len(seen) >= self.max_categories:
                    value = "other"
                out[f"{name}={value}"] = "1"
            else:
                out[name] = float(value)
        return out

    def _observe(self, feats: Mapping[str, float | str]) -> None:
        numbers = {k: v for k, v in feats.items() if not isinstance(v, str) and k not in PRIOR_WEIGHTS}
        if numbers:
            self.scaler.learn_one(numbers)
        for k, v in feats.items():
            if isinstance(v, str):
                name, _, value = k.partition("=")
                if len(self.categories[name]) < self.max_categories:
                    self.categories[name].add(value)

    def _vector(self, feats: Mapping[str, float | str], index: Mapping[str, int]) -> np.ndarray:
        x = np.zeros(len(index))
        x[0] = 1.0
        for k, v in feats.items():
            j = index.get(k)
            if j is None:
                continue
            if isinstance(v, str):
                x[j] = 1.0
            elif k in PRIOR_WEIGHTS:
                x[j] = v
            else:
                mean, std = self.frozen_scale.get(k, (0.0, 0.0))
                x[j] = (v - mean) / std if std > 0 else 0.0
        return x

    def _prior(self, d: int) -> np.ndarray:
        w0 = np.zeros(d)
        # An ordinary application (typical ratios) starts at prior_pd.
        w0[0] = math.log(self.prior_pd / (1 - self.prior_pd)) - sum(PRIOR_WEIGHTS[k] * RATIO_TYPICAL[k]
                                                                  for k in PRIOR_WEIGHTS)
        for j, name in enumerate(self.columns[:d]):
            w0[j] = PRIOR_WEIGHTS.get(name, w0[j])
        return w0

    # ----- scoring ---------------------------------------------------------------------------
    def score_rows(self, rows: Sequence[Mapping[str, Any]], observe: bool = False) -> tuple[np.ndarray, list[list[str]]]:
        """PD and readable reasons per application row (see :meth:`score_features`)."""
        return self.score_features([self.features(row) for row in rows], observe)

    def score_features(self, features: Sequence[Mapping[str, float | str]],
                       observe: bool = False) -> tuple[np.ndarray, list[list[str]]]:
        """PD and readable reasons (the features that raise it most, largest first) per
        application's features (:meth:`features`). ``observe``: the applications also teach the
        scaler and the category lists (the processor's call; a what-if query leaves them alone)."""
        index = {name: j for j, name in enumerate(self.columns)}
        typical = np.array([RATIO_TYPICAL.get(c, 0.0) for c in self.columns])
        probs, reasons = np.empty(len(features)), []
        for i, feats in enumerate(features):
            if observe:
                self._observe(feats)
            x = self._vector(feats, index)
            z = float(np.clip(x @ self.weights, -30, 30))
            probs[i] = 1.0 / (1.0 + math.exp(-z))
            reasons.append(self._reasons(feats, x, typical))
        return probs, reasons

    def _reasons(self, feats: Mapping[str, float | str], x: np.ndarray, typical: np.ndarray) -> list[str]:
        # Against an ordinary application: a ratio raises the PD by its weight times how far it
        # is above the typical ratio; other features by their standardised value (0 is the
        # average applicant) or their category.
        contrib = (x - typical) * self.weights
        out = []
        for j in np.argsort(-contrib[1:])[:3] + 1:
            if contrib[j] < 0.1:
                break
            name = self.columns[j]
            if name in RATIO_TEXT:
                out.append(f"{RATIO_TEXT[name]} {feats[name]:.2f} raises the PD")
            elif "=" in name:
                attr, _, value = name.partition("=")
                out.append(f"{attr} is {value!r}, which raises the PD")
            else:
                shown = feats.get(name)
                if name.startswith("log_") and isinstance(shown, float):
                    name, shown = name[4:], math.expm1(shown)
                out.append(f"{name} {shown:,.4g} raises the PD")
        return out

    # ----- learning ----------------------------------------------------------------------------
    def remember(self, application_ids: Sequence[str], features: Sequence[Mapping[str, float | str]]) -> None:
        """Keep each application's features as decided, for its outcome (bounded, oldest dropped)."""
        for app_id, feats in zip(application_ids, features):
            self._pending[str(app_id)] = feats
            self._pending.move_to_end(str(app_id))
        while len(self._pending) > self.remember_capacity:
            self._pending.popitem(last=False)

    def learn_from_labels(self, application_ids: Sequence[str], is_default: Sequence[int | bool]) -> int:
        """Outcomes (``default`` = 1, ``repaid`` = 0) of remembered applications; refits once
        ``refit_every`` new ones have come."""
        learned = 0
        for app_id, y in zip(application_ids, is_default):
            feats = self._pending.pop(str(app_id), None)
            if feats is not None:
                self.outcomes.append((feats, int(y)))
                learned += 1
        if len(self.outcomes) > self.max_outcomes:  # the newest are kept
            drop = len(self.outcomes) - self.max_outcomes
            del self.outcomes[:drop], self._encoded[:drop]
        self.n_learned += learned
        self._since_fit += learned
        if learned and self._since_fit >= self.refit_every and self._both_kinds_known():
            self.refit()
        return learned

    def _both_kinds_known(self) -> bool:
        if self._both_known:  # outcomes kept only grow, or stay at max_outcomes
            return True
        defaults = sum(y for _, y in self.outcomes)
        self._both_known = min(defaults, len(self.outcomes) - defaults) >= self.min_each
        return self._both_known

    def learn_rows(self, rows: Sequence[Mapping[str, Any]], defaulted: Sequence[int | bool]) -> int:
        """Learn from applications with known outcomes at once (a back book, a test)."""
        ids = [f"learn-{self.n_learned}-{i}" for i in range(len(rows))]
        features = [self.features(row) for row in rows]
        self.score_features(features, observe=True)
        self.remember(ids, features)
        return self.learn_from_labels(ids, defaulted)

    def refit(self, iterations: int = 25) -> None:
        """Newton's method on every outcome kept, from the current weights, penalised toward
        the prior (the intercept less than the other weights)."""
        self._since_fit = 0
        if not self.outcomes:
            return
        new = self.outcomes[len(self._encoded):]
        names = dict.fromkeys(self.columns)
        for feats, _ in new:
            names.update(dict.fromkeys(feats))
        self.columns = list(names)
        index = {name: j for j, name in enumerate(self.columns)}
        if len(self.outcomes) >= 2 * self._scaled_at:
            # The scale is frozen anew as the outcomes double (and every row encoded again);
            # in between, only new outcomes are encoded.
            self.frozen_scale = {k: (float(m), math.sqrt(float(v))) for k, m in self.scaler.means.items()
                                 for v in (self.scaler.vars.get(k, 0.0),)}
            self._scaled_at, self._encoded, new = len(self.outcomes), [], self.outcomes
        self._encoded += [self._vector(feats, index) for feats, _ in new]
        X = np.zeros((len(self._encoded), len(self.columns)))
        for i, row in enumerate(self._encoded):  # a column seen first later is 0 in earlier rows
            X[i, :len(row)] = row
        y = np.fromiter((t for _, t in self.outcomes), np.float64, len(self.outcomes))
        w0 = self._prior(len(self.columns))
        w = np.concatenate([self.weights, w0[len(self.weights):]])
        penalty = np.full(len(w), self.l2)
        penalty[0] = self.intercept_l2
        def loss(w: np.ndarray) -> float:
            z = X @ w
            return float(np.logaddexp(0.0, z).sum() - y @ z + 0.5 * (penalty * (w - w0) ** 2).sum())

        current = loss(w)
        for _ in range(iterations):
            p = 1.0 / (1.0 + np.exp(-np.clip(X @ w, -30, 30)))
            grad = X.T @ (p - y) + penalty * (w - w0)
            hess = (X * (p * (1 - p))[:, None]).T @ X + np.diag(penalty)
            step = np.linalg.solve(hess, grad)
            # Halve the step until the penalised loss falls: a full Newton step overshoots
            # when outcomes separate (a weight heading off to infinity).
            for _ in range(30):
                trial = loss(w - step)
                if trial <= current:
                    break
                step = step / 2
            else:
                break
            w, current = w - step, trial
            if np.abs(step).max() < 1e-7:
                break
        self.weights = w
        self.fits += 1

    # ----- state -------------------------------------------------------------------------------
    def checkpoint(self) -> bytes:
        # Only riskstream reads this back (its own state store; see detectors.base).
        return pickle.dumps(self.__dict__, protocol=PICKLE_PROTOCOL)

    def restore(self, blob: bytes) -> None:
        self.__dict__.update(pickle.loads(blob))
