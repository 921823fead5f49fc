"""Backtests of one-day VaR and ES forecasts against the returns that followed.

* Kupiec's proportion-of-failures test: is the number of exceptions (losses beyond VaR) what
  the confidence level implies? LR ~ chi2(1).
* Christoffersen's independence test (do exceptions cluster?) and conditional coverage (both
  at once). LR ~ chi2(1) and chi2(2).
* The Basel traffic light over every 250-day window: green up to 4 exceptions, yellow 5-9,
  red 10 or more (the 99% zones; other levels use the binomial cumulative probabilities
  95% and 99.99% that define them).
* Acerbi & Szekely's Z2 test of Expected Shortfall: Z2 = sum(X_t I_t / (T (1-c) ES_t)) + 1,
  with X_t the return, I_t the exception indicator. Its expectation is 0 when ES is right and
  negative when ES understates the tail. The p-value is simulated: each day's return is drawn
  from a Student-t scaled to match that day's VaR and ES (the ES/VaR ratio fixes the
  degrees of freedom), so the test judges the forecasts themselves, whatever model made them.

>>> import numpy as np
>>> exceptions = np.zeros(1000, bool); exceptions[::100] = True
>>> abs(round(kupiec(exceptions, 0.99)["lr"], 6)), christoffersen(exceptions)["lr_independence"] < 1
(0.0, True)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats


def kupiec(exceptions: np.ndarray, confidence: float) -> dict[str, float]:
    n = len(exceptions)
    k = int(np.count_nonzero(exceptions))
    q = 1.0 - confidence
    pi = k / n if n else 0.0

    def loglik(p: float) -> float:
        return (n - k) * math.log(1 - p) + (k * math.log(p) if k else 0.0) if 0 < p < 1 else 0.0

    lr = -2.0 * (loglik(q) - loglik(pi)) if 0 < pi < 1 else -2.0 * loglik(q)
    return {"exceptions": k, "expected": n * q, "days": n, "lr": lr, "p_value": float(stats.chi2.sf(lr, 1))}


def christoffersen(exceptions: np.ndarray) -> dict[str, float]:
    """Independence of exceptions (a first-order Markov chain against independence)."""
    e = np.asarray(exceptions, bool).astype(np.int8)
    prev, cur = e[:-1], e[1:]
    n00 = int(np.sum((prev == 0) & (cur == 0)))
    n01 = int(np.sum((prev == 0) & (cur == 1)))
    n10 = int(np.sum((prev == 1) & (cur == 0)))
    n11 = int(np.sum((prev == 1) & (cur == 1)))

    def ll(count: int, p: float) -> float:
        return count * math.log(p) if count else 0.0

    p01 = n01 / (n00 + n01) if n00 + n01 else 0.0
    p11 = n11 / (n10 + n11) if n10 + n11 else 0.0
    p = (n01 + n11) / (n00 + n01 + n10 + n11)
    l_ind = ll(n00, 1 - p) + ll(n01, p) + ll(n10, 1 - p) + ll(n11, p)
    l_markov = ll(n00, 1 - p01) + ll(n01, p01) + ll(n10, 1 - p11) + ll(n11, p11)
    lr = max(0.0, -2.0 * (l_ind - l_markov))
    return {"lr_independence": lr, "p_independence": float(stats.chi2.sf(lr, 1)),
            "transitions": {"n00": n00, "n01": n01, "n10": n10, "n11": n11}}


def basel_zones(exceptions: np.ndarray, confidence: float, window: int = 250) -> dict[str, Any]:
    """Exceptions in every ``window``-day window, and how many windows fall in each zone."""
    e = np.asarray(exceptions, np.int64)
    if len(e) < window:
        return {"windows": 0, "green": 0, "yellow": 0, "red": 0, "worst": 0, "limits": None}
    counts = np.convolve(e, np.ones(window, np.int64), mode="valid")
    binom = stats.binom(window, 1.0 - confidence)
    yellow_from = int(np.argmax(binom.cdf(np.arange(window + 1)) >= 0.95))  # 5 at 99%
    red_from = int(np.argmax(binom.cdf(np.arange(window + 1)) >= 0.9999))  # 10 at 99%
    return {"windows": len(counts), "green": int(np.sum(counts < yellow_from)),
            "yellow": int(np.sum((counts >= yellow_from) & (counts < red_from))),
            "red": int(np.sum(counts >= red_from)), "worst": int(counts.max()),
            "limits": {"yellow_from": yellow_from, "red_from": red_from}}


def z2_statistic(returns: np.ndarray, var: np.ndarray, es: np.ndarray, confidence: float) -> float:
    exceed = -returns > var
    return float(np.sum(returns * exceed / es) / (len(returns) * (1.0 - confidence)) + 1.0)


def _t_tail_ratio(confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """ES/VaR of a Student-t at the level, for degrees of freedom from 2.2 to 200 (and normal)."""
    nus = np.r_[np.geomspace(2.2, 200.0, 200), np.inf]
    ratios = []
    for nu in nus:
        if np.isinf(nu):
            z = stats.norm.ppf(confidence)
            ratios.append(stats.norm.pdf(z) / (1 - confidence) / z)
        else:
            q = stats.t.ppf(confidence, nu)
            es = stats.t.pdf(q, nu) / (1 - confidence) * (nu + q * q) / (nu - 1)
            ratios.append(es / q)
    return nus, np.asarray(ratios)


def es_test(returns: np.ndarray, var: np.ndarray, es: np.ndarray, confidence: float,
            simulations: int = 1000, seed: int = 0) -> dict[str, float]:
    """Acerbi-Szekely Z2 and its simulated p-value (see the module docstring)."""
    z2 = z2_statistic(returns, var, es, confidence)
    nus, ratios = _t_tail_ratio(confidence)
    ratio = np.clip(es / var, ratios.min(), ratios.max())
    order = np.argsort(ratios)  # the ratio falls as the degrees of freedom rise
    nu = np.interp(ratio, ratios[order], nus[order].clip(max=1e6))
    scale = var / np.where(np.isinf(nu) | (nu > 1e5), stats.norm.ppf(confidence), stats.t.ppf(confidence, nu))
    rng = np.random.default_rng(seed)
    draws = stats.t.rvs(np.minimum(nu, 1e6), size=(simulations, len(var)), random_state=rng) * scale
    exceed = -draws > var
    simulated = np.sum(draws * exceed / es, axis=1) / (len(var) * (1.0 - confidence)) + 1.0
    return {"z2": z2, "p_value": float(np.mean(simulated <= z2)), "simulations": simulations}


def backtest(returns: np.ndarray, var: np.ndarray, es: np.ndarray, confidence: float) -> dict[str, Any]:
    """Every test over the days where the model gave a figure."""
    ok = ~np.isnan(var) & ~np.isnan(es)
    r, v, s = np.asarray(returns)[ok], np.asarray(var)[ok], np.asarray(es)[ok]
    exceptions = -r > v
    pof = kupiec(exceptions, confidence)
    ind = christoffersen(exceptions)
    lr_cc = pof["lr"] + ind["lr_independence"]
    return {
        "days": pof["days"], "exceptions": pof["exceptions"], "expected": pof["expected"],
        "kupiec_lr": pof["lr"], "kupiec_p": pof["p_value"],
        "christoffersen_ind_lr": ind["lr_independence"], "christoffersen_ind_p": ind["p_independence"],
        "conditional_coverage_lr": lr_cc, "conditional_coverage_p": float(stats.chi2.sf(lr_cc, 2)),
        "basel": basel_zones(exceptions, confidence),
        "es_test": es_test(r, v, s, confidence),
    }
