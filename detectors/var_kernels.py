"""Jitted kernels of the market-risk models, each with a plain-Python reference.

Every kernel is a 1-D loop over one return series in time order that writes, for each day
*t*, a forecast made only from the returns before *t* (no look-ahead): the variance forecast
of the EWMA (RiskMetrics) and GJR-GARCH filters, and the historical-simulation VaR and
Expected Shortfall of a rolling window. Losses are positive numbers (``-return``); VaR and ES
are positive loss fractions.

>>> import numpy as np
>>> r = np.array([0.01, -0.02, 0.015, -0.03, 0.0])
>>> out = np.empty(5)
>>> ewma_variance(r, 0.94, 1e-4, out)
>>> [round(float(v), 7) for v in out[:3]]
[0.0001, 0.0001, 0.000118]
"""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True)
def ewma_variance(returns, lam, init_var, out):
    """``out[t]`` = the RiskMetrics variance forecast for day t:
    ``lam * var[t-1] + (1 - lam) * r[t-1]**2``, starting from ``init_var``."""
    var = init_var
    for t in range(returns.shape[0]):
        if t > 0:
            var = lam * var + (1.0 - lam) * returns[t - 1] * returns[t - 1]
        out[t] = var


def ewma_variance_reference(returns, lam, init_var, out):
    var = init_var
    for t, _ in enumerate(returns):
        if t:
            var = lam * var + (1 - lam) * float(returns[t - 1]) ** 2
        out[t] = var


@numba.njit(cache=True)
def gjr_variance(eps, omega, alpha, gamma, beta, init_var, out):
    """``out[t]`` = the GJR-GARCH(1,1) conditional variance of day t from the shocks before it:
    ``omega + (alpha + gamma * [eps[t-1] < 0]) * eps[t-1]**2 + beta * out[t-1]``."""
    var = init_var
    for t in range(eps.shape[0]):
        if t > 0:
            e = eps[t - 1]
            a = alpha + gamma if e < 0.0 else alpha
            var = omega + a * e * e + beta * var
        out[t] = var


def gjr_variance_reference(eps, omega, alpha, gamma, beta, init_var, out):
    var = init_var
    for t in range(len(eps)):
        if t:
            e = float(eps[t - 1])
            var = omega + (alpha + (gamma if e < 0 else 0.0)) * e * e + beta * var
        out[t] = var


@numba.njit(cache=True)
def _quantile_sorted(sorted_values, q):
    """The ``q`` quantile of sorted values, interpolated linearly (NumPy's default)."""
    n = sorted_values.shape[0]
    pos = q * (n - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, n - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@numba.njit(cache=True)
def historical_var_es(losses, window, confidence, out_var, out_es):
    """``out_var[t]``, ``out_es[t]``: the ``confidence`` quantile of the ``window`` losses before
    day t, and the mean of those at or beyond it; NaN until a full window is there."""
    n = losses.shape[0]
    buf = np.empty(window)
    for t in range(n):
        if t < window:
            out_var[t] = np.nan
            out_es[t] = np.nan
            continue
        for i in range(window):
            buf[i] = losses[t - window + i]
        buf.sort()
        var = _quantile_sorted(buf, confidence)
        total = 0.0
        count = 0
        for i in range(window):
            if buf[i] >= var:
                total += buf[i]
                count += 1
        out_var[t] = var
        out_es[t] = total / count


def historical_var_es_reference(losses, window, confidence, out_var, out_es):
    for t in range(len(losses)):
        if t < window:
            out_var[t] = out_es[t] = float("nan")
            continue
        past = sorted(float(v) for v in losses[t - window:t])
        pos = confidence * (window - 1)
        lo = int(pos)
        hi = min(lo + 1, window - 1)
        var = past[lo] + (past[hi] - past[lo]) * (pos - lo)
        tail = [v for v in past if v >= var]
        out_var[t], out_es[t] = var, sum(tail) / len(tail)
