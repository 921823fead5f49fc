"""One-day Value-at-Risk and Expected Shortfall models over a return series, with no look-ahead.

Each model turns log returns into, for every day *t*, the VaR and ES of day *t*'s loss made
from the returns before *t* only, as positive loss fractions (NaN while a model still lacks
history). They are built on the kernels of ``detectors.var_kernels``.

* ``hs``: historical simulation over the last 250 days, the classic baseline.
* ``ewma``: RiskMetrics, normal returns scaled by an EWMA volatility (``lam`` 0.94).
* ``fhs-ewma``: filtered historical simulation, returns standardised by the EWMA volatility,
  the empirical tail of the standardised returns, rescaled by today's volatility.
* ``fhs-gjr``: the same with an asymmetric GJR-GARCH(1,1) volatility (a bad day raises
  tomorrow's volatility more than a good one), refitted every ``refit_days``.
* ``fhs-gjr-gpd`` (the default): GJR-GARCH standardisation with an extreme-value tail: a
  generalized Pareto distribution fitted to the worst ``tail_share`` of the standardised
  losses (McNeil & Frey 2000), whose quantile and ES extrapolate beyond the few extreme days
  a window holds.

GJR-GARCH is fitted by quasi maximum likelihood with the ``arch`` package on the last
``window`` returns; the volatility between refits is rolled forward day by day with the
fitted parameters (``gjr_variance``). The GPD is fitted with SciPy.

>>> import numpy as np
>>> r = np.random.default_rng(1).standard_t(5, 1200) * 0.01
>>> f = forecast("hs", r, 0.99)
>>> bool(np.isnan(f.var[:250]).all() and (f.es[250:] >= f.var[250:]).all())
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import stats

from riskstream.detectors.var_kernels import ewma_variance, gjr_variance, historical_var_es

DEFAULT_MODEL = "fhs-gjr-gpd"


@dataclass(frozen=True)
class VarForecast:
    """Per day: ``var`` and ``es`` (positive loss fractions; NaN before the model can say)."""

    model: str
    confidence: float
    var: np.ndarray
    es: np.ndarray


def historical(returns: np.ndarray, confidence: float, window: int = 250) -> VarForecast:
    var, es = np.empty(len(returns)), np.empty(len(returns))
    historical_var_es(-np.asarray(returns, np.float64), window, confidence, var, es)
    return VarForecast("hs", confidence, var, es)


def ewma_normal(returns: np.ndarray, confidence: float, lam: float = 0.94, init_window: int = 250) -> VarForecast:
    r = np.asarray(returns, np.float64)
    variance = np.empty(len(r))
    ewma_variance(r, lam, float(np.var(r[:init_window])), variance)
    sigma = np.sqrt(variance)
    z = stats.norm.ppf(confidence)
    var = z * sigma
    es = sigma * stats.norm.pdf(z) / (1.0 - confidence)
    var[:init_window] = es[:init_window] = np.nan  # the start variance is made of these days
    return VarForecast("ewma", confidence, var, es)


@dataclass(frozen=True)
class TailFit:
    """VaR and ES of the standardised loss at the confidence level."""

    quantile: float
    shortfall: float


def empirical_tail(std_losses: np.ndarray, confidence: float) -> TailFit:
    q = float(np.quantile(std_losses, confidence))
    return TailFit(q, float(std_losses[std_losses >= q].mean()))


def gpd_tail(std_losses: np.ndarray, confidence: float, tail_share: float = 0.10) -> TailFit:
    """McNeil & Frey: a generalized Pareto distribution over the losses beyond the
    ``1 - tail_share`` quantile ``u``; its quantile and ES at ``confidence``."""
    u = float(np.quantile(std_losses, 1.0 - tail_share))
    excess = std_losses[std_losses > u] - u
    xi, _, beta = stats.genpareto.fit(excess, floc=0.0)
    xi = min(float(xi), 0.9)  # ES needs xi < 1; equity tails fit near 0-0.3
    tail_odds = len(std_losses) / len(excess) * (1.0 - confidence)
    q = u + beta / xi * (tail_odds ** -xi - 1.0) if abs(xi) > 1e-9 else u - beta * np.log(tail_odds)
    return TailFit(float(q), float((q + beta - xi * u) / (1.0 - xi)))


@dataclass(frozen=True)
class GjrFit:
    mu: float
    omega: float
    alpha: float
    gamma: float
    beta: float

    @classmethod
    def fit(cls, returns: np.ndarray, start: np.ndarray | None = None) -> tuple["GjrFit", np.ndarray]:
        """QML fit on percent returns (better conditioned), returned in return units; also the
        parameters as ``arch`` holds them, to start the next fit from."""
        import warnings

        from arch import arch_model
        from arch.utility.exceptions import StartingValueWarning

        model = arch_model(returns * 100.0, mean="Constant", vol="GARCH", p=1, o=1, q=1, dist="normal", rescale=False)
        with warnings.catch_warnings():
            # The previous fit's parameters start the next; arch falls back to its own when they
            # fall outside the constraints, which is what we want.
            warnings.simplefilter("ignore", StartingValueWarning)
            res = model.fit(disp="off", starting_values=start)
        mu, omega, alpha, gamma, beta = (float(v) for v in res.params.values)
        return cls(mu / 100.0, omega / 1e4, alpha, gamma, beta), res.params.values


def filtered_historical(returns: np.ndarray, confidence: float, *, volatility: str = "gjr", tail: str = "gpd",
                        window: int = 1500, min_history: int = 500, refit_days: int = 20, lam: float = 0.94,
                        tail_share: float = 0.10, name: str | None = None) -> VarForecast:
    """Filtered historical simulation. Every ``refit_days`` (from ``min_history`` returns on)
    the volatility model and the tail are fitted on the last ``window`` returns; each day's
    VaR and ES are the fitted standardised tail times that day's volatility forecast."""
    r = np.asarray(returns, np.float64)
    n = len(r)
    var, es = np.full(n, np.nan), np.full(n, np.nan)
    fit_tail: Callable[[np.ndarray, float], TailFit] = (
        (lambda z, c: gpd_tail(z, c, tail_share)) if tail == "gpd" else empirical_tail)
    start = None
    for t0 in range(min_history, n, refit_days):
        first = max(0, t0 - window)
        upto = min(n, t0 + refit_days)  # the days this fit serves
        segment = r[first:upto]  # variance of day t uses returns before t only
        variance = np.empty(len(segment))
        if volatility == "gjr":
            fit, start = GjrFit.fit(r[first:t0], start)
            mu = fit.mu
            gjr_variance(segment - mu, fit.omega, fit.alpha, fit.gamma, fit.beta,
                         float(np.var(r[first:t0])), variance)
        else:
            mu = 0.0
            ewma_variance(segment, lam, float(np.var(r[first:t0])), variance)
        sigma = np.sqrt(variance)
        fitted = t0 - first
        std_losses = -(segment[:fitted] - mu) / sigma[:fitted]
        tail_fit = fit_tail(std_losses[50:], confidence)  # the first weeks: the filter still settling
        served = slice(t0, upto)
        var[served] = -mu + sigma[fitted:] * tail_fit.quantile
        es[served] = -mu + sigma[fitted:] * tail_fit.shortfall
    return VarForecast(name or f"fhs-{volatility}" + ("-gpd" if tail == "gpd" else ""), confidence, var, es)


MODELS: dict[str, Callable[[np.ndarray, float], VarForecast]] = {
    "hs": historical,
    "ewma": ewma_normal,
    "fhs-ewma": lambda r, c: filtered_historical(r, c, volatility="ewma", tail="empirical", name="fhs-ewma"),
    "fhs-gjr": lambda r, c: filtered_historical(r, c, volatility="gjr", tail="empirical", name="fhs-gjr"),
    "fhs-gjr-gpd": lambda r, c: filtered_historical(r, c, volatility="gjr", tail="gpd", name="fhs-gjr-gpd"),
}


def forecast(model: str, returns: np.ndarray, confidence: float = 0.99) -> VarForecast:
    if model not in MODELS:
        raise ValueError(f"unknown VaR model {model!r}; the models are: {', '.join(MODELS)}")
    if not 0.5 < confidence < 1.0:
        raise ValueError(f"confidence {confidence}: expected a level such as 0.95 or 0.99")
    return MODELS[model](np.asarray(returns, np.float64), confidence)
