"""Portfolio VaR and ES from the joint history of its instruments' daily returns.

A portfolio's P&L under each past day's returns (a scenario) is the sum over its positions
of the position's value times that day's simple return of its instrument (``growth``: the
log return, rescaled by the instrument's volatility now over its volatility then for
filtered historical simulation, made simple with ``expm1``; see :func:`scenario_growth`).
VaR and ES at a level are the quantile of the scenario losses and the mean of those beyond
it: never a sum of single-instrument VaRs.

>>> import numpy as np
>>> exposure = np.array([100.0, -50.0]); slot = np.array([0, 1])
>>> growth = scenario_growth(np.array([[0.01, -0.02, 0.0], [0.01, 0.03, -0.01]]), np.ones((2, 3)))
>>> out = np.empty(3)
>>> scenario_pnl(exposure, slot, growth, out)
>>> [round(float(v), 4) for v in out]
[0.5025, -3.5029, 0.4975]
"""

from __future__ import annotations

import math

import numba
import numpy as np

from riskstream.detectors.var_kernels import _quantile_sorted


def scenario_growth(returns: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Per instrument and scenario day, the simple return: ``exp(log return * scale) - 1``.
    Made once per window (a day close), not per refresh."""
    return np.expm1(returns * scale)


@numba.njit(cache=True)
def scenario_pnl(exposure, slot, growth, out):
    """``out[s] = sum_j exposure[j] * growth[slot[j], s]``."""
    out[:] = 0.0
    for j in range(exposure.shape[0]):
        row = growth[slot[j]]
        e = exposure[j]
        for s in range(out.shape[0]):
            out[s] += e * row[s]


def scenario_pnl_reference(exposure, slot, returns, scale, out):
    """From the log returns and scales themselves (the kernel takes their growth)."""
    for s in range(len(out)):
        out[s] = sum(float(e) * (math.exp(float(returns[i, s]) * float(scale[i, s])) - 1.0)
                     for e, i in zip(exposure, slot))


@numba.njit(cache=True)
def var_es_of_losses(losses, confidence):
    """(VaR, ES) of a sample of losses: the quantile (linear, as NumPy) and the mean beyond it."""
    ordered = np.sort(losses)
    var = _quantile_sorted(ordered, confidence)
    total = 0.0
    count = 0
    for v in ordered:
        if v >= var:
            total += v
            count += 1
    return var, total / count


def var_es_of_losses_reference(losses, confidence):
    var = float(np.quantile(losses, confidence))
    tail = [float(v) for v in losses if v >= var]
    return var, sum(tail) / len(tail)
