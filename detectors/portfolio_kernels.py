"""Portfolio VaR and ES from the joint history of its instruments' daily returns.

A portfolio's P&L under each past day's returns (a scenario) is the sum over its positions
of the position's value times that day's simple return of its instrument (``growth``: the
log return, rescaled by the instrument's volatility now over its volatility then for
filtered historical simulation, made simple with ``expm1``; see :func:`scenario_growth`).
VaR and ES at a level are the quantile of the scenario losses and the mean of those beyond
it: never a sum of single-instrument VaRs.

The plain references (``scenario_pnl_reference``, ``var_es_of_losses_reference``) compute
the same from the definitions, for the parity tests.

>>> import numpy as np
>>> growth = scenario_growth(np.array([[0.01, -0.02, 0.0], [0.01, 0.03, -0.01]]), np.ones((2, 3)))
>>> out = np.empty((1, 9))
>>> portfolio_figures(np.array([0, 2]), np.array([0, 1]), np.array([100.0, -50.0]), np.ones(2), np.ones(2),
...                   growth, out)
>>> [round(float(v), 4) for v in out[0, [0, 2, 6]]]  # value, gross, 99% VaR (the -3.5 scenario)
[50.0, 150.0, 3.4229]
"""

from __future__ import annotations

import math

import numba
import numpy as np



def scenario_growth(returns: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Per instrument and scenario day, the simple return: ``exp(log return * scale) - 1``.
    Made once per window (a day close), not per refresh."""
    return np.expm1(returns * scale)


def scenario_pnl_reference(exposure, slot, returns, scale, out):
    """Each scenario's P&L from the log returns and scales themselves."""
    for s in range(len(out)):
        out[s] = sum(float(e) * (math.exp(float(returns[i, s]) * float(scale[i, s])) - 1.0)
                     for e, i in zip(exposure, slot))


def var_es_of_losses_reference(losses, confidence):
    """(VaR, ES) of a sample of losses: NumPy's quantile, and the mean of those at or beyond it."""
    var = float(np.quantile(losses, confidence))
    tail = [float(v) for v in losses if v >= var]
    return var, sum(tail) / len(tail)


@numba.njit(cache=True)
def portfolio_figures(offsets, slots, qty, last_price, day_reference, growth, out):
    """Figures of many portfolios in one pass; portfolio k holds positions
    ``offsets[k]:offsets[k + 1]`` (instrument ``slots``, signed ``qty``). ``out[k]`` gets:
    value, value at the day's reference prices, gross, the largest single position's absolute
    value, VaR 95%, ES 95%, VaR 99%, ES 99%, and the number of priced positions. Unpriced
    positions (NaN price) are left out."""
    h = growth.shape[1]
    tail = h - int(math.floor(0.95 * (h - 1)))  # from the 95% quantile's lower neighbour up
    pnl = np.empty(h)
    for k in range(offsets.shape[0] - 1):
        pnl[:] = 0.0
        value = 0.0
        reference = 0.0
        gross = 0.0
        largest = 0.0
        priced = 0
        for j in range(offsets[k], offsets[k + 1]):
            i = slots[j]
            price = last_price[i]
            if price != price:
                continue
            v = qty[j] * price
            value += v
            reference += qty[j] * day_reference[i]
            gross += abs(v)
            largest = max(largest, abs(v))
            priced += 1
            row = growth[i]
            for s in range(h):
                pnl[s] += v * row[s]
        top = _largest(pnl, tail)  # the worst scenario losses, ascending: the tails need no more
        out[k, 0] = value
        out[k, 1] = reference
        out[k, 2] = gross
        out[k, 3] = largest
        for c, col in ((0.95, 4), (0.99, 6)):
            pos = c * (h - 1)  # the quantile NumPy interpolates, indexed into the top values
            lo = int(math.floor(pos))
            hi = min(lo + 1, h - 1)
            a, b = top[lo - (h - tail)], top[hi - (h - tail)]
            var = a + (b - a) * (pos - lo)
            total = 0.0
            count = 0
            for s in range(tail - 1, -1, -1):
                if top[s] < var:
                    break
                total += top[s]
                count += 1
            out[k, col] = var
            out[k, col + 1] = total / count
        out[k, 8] = priced


@numba.njit(cache=True)
def _largest(pnl, m):
    """The ``m`` largest losses (``-pnl``) in ascending order, by insertion into a small buffer:
    the 95% tail of 250 scenarios is 14 values, and sorting all 250 per portfolio was most of
    a refresh."""
    buf = np.full(m, -np.inf)
    for s in range(pnl.shape[0]):
        v = -pnl[s]
        if v <= buf[0]:
            continue
        i = 0
        while i + 1 < m and buf[i + 1] < v:
            buf[i] = buf[i + 1]
            i += 1
        buf[i] = v
    return buf
