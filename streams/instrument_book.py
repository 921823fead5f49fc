"""Per instrument, in numpy arrays: prices, daily returns and the volatility that filters them.

:class:`InstrumentBook` keeps the last price, the previous day's close and a ring of daily log
returns by UTC calendar day, each with the volatility forecast the instrument had for that
day. It turns them into the scenario window of filtered historical simulation: each past
day's return rescaled by the volatility now over the volatility then.

The volatility is EWMA (RiskMetrics, ``lam``) until an instrument has ``min_fit_returns``
daily returns; with ``volatility="gjr"`` an asymmetric GJR-GARCH(1,1) then takes over
(:class:`VolatilityFits`), refitted every ``refit_days`` returns on the last ``fit_window``.
A fit runs off the hot path (a helper process) and is applied when it is ready: the
instrument's whole window is re-filtered with the new parameters, so one model's
volatilities stand behind every scenario of the window.
"""

from __future__ import annotations

import collections
import logging
import math
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from riskstream.detectors.portfolio_kernels import scenario_growth
from riskstream.detectors.var_kernels import gjr_variance

log = logging.getLogger("riskstream.market")


@dataclass(frozen=True)
class GjrParams:
    mu: float
    omega: float
    alpha: float
    gamma: float
    beta: float

    def usable(self) -> bool:
        """Positive variance and a stationary process; otherwise the fit is not used. The
        optimiser meets its bounds only to within ~1e-10, hence the tolerance."""
        tol = 1e-8
        return (self.omega > 0 and self.alpha >= -tol and self.beta >= -tol and self.alpha + self.gamma >= -tol
                and self.alpha + self.gamma / 2 + self.beta < 1)


def fit_gjr(returns: np.ndarray) -> GjrParams:
    """Quasi maximum likelihood (``detectors.var_models.GjrFit``); runs in the helper process."""
    from riskstream.detectors.var_models import GjrFit

    fit, _ = GjrFit.fit(np.asarray(returns, np.float64))
    return GjrParams(fit.mu, fit.omega, fit.alpha, fit.gamma, fit.beta)


class InlineExecutor(Executor):
    """Fits at once, in this thread: deterministic, for replays, backtests and tests."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # reported where the result is collected
            future.set_exception(exc)
        return future


class VolatilityFits:
    """GJR-GARCH parameters per instrument slot, refitted every ``refit_days`` closed days."""

    def __init__(self, refit_days: int = 20, min_fit_returns: int = 250, fit_window: int = 1000,
                 background: bool = True):
        self.refit_days, self.min_fit_returns, self.fit_window = refit_days, min_fit_returns, fit_window
        self.background = background
        self.history: dict[int, collections.deque] = {}  # slot -> (day, return), oldest first
        self.since_fit: dict[int, int] = {}
        self.params: dict[int, GjrParams] = {}
        self.fits_applied = 0
        self._pending: dict[int, Future] = {}
        self._executor: Executor | None = None

    def __getstate__(self) -> dict:
        # Fits in flight are not saved; the instruments are due again after a restore.
        state = dict(self.__dict__, _pending={}, _executor=None)
        state["since_fit"] = {s: (self.refit_days if s in self._pending else n) for s, n in self.since_fit.items()}
        return state

    def closed(self, slot: int, day: int, r: float) -> None:
        history = self.history.get(slot)
        if history is None:
            history = self.history[slot] = collections.deque(maxlen=self.fit_window)
        history.append((day, r))
        self.since_fit[slot] = n = self.since_fit.get(slot, self.refit_days - 1) + 1
        if n >= self.refit_days and len(history) >= self.min_fit_returns and slot not in self._pending:
            self.since_fit[slot] = 0
            returns = np.fromiter((x for _, x in history), np.float64, len(history))
            self._pending[slot] = (self.executor().submit(fit_gjr, returns), history[0][0], len(history))

    def executor(self) -> Executor:
        if self._executor is None:
            if self.background:
                import multiprocessing

                self._executor = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            else:
                self._executor = InlineExecutor()
        return self._executor

    def ready(self) -> list[tuple[int, GjrParams, int, int]]:
        """Fits finished since last asked, usable ones only, with the first day and the number
        of returns each was fitted on; never waits."""
        done = [slot for slot, (fut, _, _) in self._pending.items() if fut.done()]
        out = []
        for slot in done:
            fut, first_day, n = self._pending.pop(slot)
            try:
                params = fut.result()
            except Exception as exc:  # a failed fit keeps the volatility model in force
                log.warning("GJR-GARCH refit of instrument slot %d failed: %s", slot, exc)
                continue
            if params.usable():
                out.append((slot, params, first_day, n))
        return out

    def wait(self, timeout: float = 300.0) -> int:
        """Wait for the fits in flight (a bench or test wanting the steady state); how many."""
        from concurrent.futures import wait

        futures = [fut for fut, _, _ in self._pending.values()]
        wait(futures, timeout=timeout)
        return len(futures)

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


class InstrumentBook:
    def __init__(self, history_days: int = 250, lam: float = 0.94, fits: VolatilityFits | None = None):
        self.history_days = history_days
        self.lam = lam
        self.fits = fits  # None: EWMA only
        self.slots: dict[str, int] = {}
        # The scenario window is rebuilt when the day changes; within a day, an instrument
        # whose day closes (or that is new, or refitted) has its row rebuilt alone.
        self._window_day: int | None = None
        self._growth = np.zeros((0, history_days))
        self._have = np.zeros((0, history_days), bool)
        self._stale: set[int] = set()
        self.closed: list[tuple[int, int, float]] = []  # (slot, day, return) of days closed since asked
        self._alloc(16)

    @property
    def model(self) -> str:
        return "fhs-ewma" if self.fits is None else "fhs-gjr"

    def _alloc(self, capacity: int) -> None:
        h, old = self.history_days, getattr(self, "last_price", None)
        n = 0 if old is None else len(old)
        grow = {
            "last_price": np.full(capacity, np.nan), "prev_close": np.full(capacity, np.nan),
            "last_day": np.full(capacity, -1, np.int64), "variance": np.full(capacity, np.nan),
            "mu": np.zeros(capacity), "gjr": np.zeros(capacity, bool),
            "ret": np.zeros((capacity, h)), "ret_day": np.full((capacity, h), -1, np.int64),
            "sigma_at": np.full((capacity, h), np.nan),
        }
        for name, arr in grow.items():
            if old is not None:
                arr[:n] = getattr(self, name)
            setattr(self, name, arr)

    def slot(self, instrument: str) -> int:
        i = self.slots.get(instrument)
        if i is None:
            i = self.slots[instrument] = len(self.slots)
            if i >= len(self.last_price):
                self._alloc(2 * len(self.last_price))
        return i

    def tick(self, instrument: str, day: int, price: float) -> int:
        """A price; the first tick of a later day closes the instrument's previous day."""
        i = self.slot(instrument)
        last = self.last_day[i]
        if last >= 0 and day > last:
            close = self.last_price[i]
            if not math.isnan(self.prev_close[i]):
                self._record(i, int(last), math.log(close / self.prev_close[i]))
            self.prev_close[i] = close
        if day >= last:
            self.last_price[i], self.last_day[i] = price, day
        return i

    def _record(self, i: int, day: int, r: float) -> None:
        var = self.variance[i]
        h = day % self.history_days
        self.ret[i, h], self.ret_day[i, h] = r, day
        self.sigma_at[i, h] = math.sqrt(var) if var > 0 else np.nan
        if self.gjr[i]:
            p = self.fits.params[i]
            e = r - p.mu
            self.variance[i] = p.omega + (p.alpha + (p.gamma if e < 0 else 0.0)) * e * e + p.beta * var
        else:
            self.variance[i] = r * r if math.isnan(var) else self.lam * var + (1 - self.lam) * r * r
        self._stale.add(i)
        self.closed.append((i, day, r))
        if self.fits is not None:
            self.fits.closed(i, day, r)

    def apply_fits(self) -> int:
        """Put finished GJR-GARCH fits in force; returns how many."""
        if self.fits is None:
            return 0
        ready = self.fits.ready()
        for i, params, first_day, n in ready:
            self.apply_fit(i, params, first_day, n)
        return len(ready)

    def apply_fit(self, i: int, params: GjrParams, first_day: int, fitted: int) -> None:
        """Re-filter instrument ``i``'s returns with ``params`` from the first day of the fit
        window on, starting from the sample variance of the ``fitted`` returns the fit saw (as
        the fit did), through any returns closed since: the volatility of every day in the
        window and the forecast for the next come from the one model."""
        kept = [(d, x) for d, x in self.fits.history[i] if d >= first_day]
        days = np.fromiter((d for d, _ in kept), np.int64, len(kept))
        returns = np.fromiter((x for _, x in kept), np.float64, len(kept))
        eps = np.append(returns - params.mu, 0.0)
        variance = np.empty(len(eps))
        gjr_variance(eps, params.omega, params.alpha, params.gamma, params.beta, float(np.var(returns[:fitted])),
                     variance)
        self.fits.params[i] = params
        self.fits.fits_applied += 1
        self.gjr[i], self.mu[i], self.variance[i] = True, params.mu, variance[-1]
        cols = days % self.history_days
        mine = self.ret_day[i, cols] == days
        self.sigma_at[i, cols[mine]] = np.sqrt(variance[:-1][mine])
        self._stale.add(i)

    def window(self, today: int) -> tuple[np.ndarray, int]:
        """Scenario growth of every instrument over the ``history_days`` calendar days before
        ``today`` (column s = day ``today - 1 - s``; 0 where an instrument had no return):
        each daily log return rescaled by the instrument's volatility now over then (filtered
        HS), as a simple return; and how many of those days have any return."""
        n = len(self.slots)
        if today != self._window_day or n != len(self._growth):
            self._window_day, self._stale = today, set()
            self._growth, self._have = self._rows(np.arange(n), today)
        elif self._stale:
            rows = np.fromiter(self._stale, np.int64, len(self._stale))
            self._stale = set()
            self._growth[rows], self._have[rows] = self._rows(rows, today)
        return self._growth, int(self._have.any(axis=0).sum())

    def _rows(self, rows: np.ndarray, today: int) -> tuple[np.ndarray, np.ndarray]:
        h = self.history_days
        days = today - 1 - np.arange(h)
        cols = days % h
        have = self.ret_day[rows][:, cols] == days[None, :]
        mu = self.mu[rows][:, None]  # the fitted mean return (0 under EWMA): only the shock is rescaled
        shocks = np.where(have, self.ret[rows][:, cols] - mu, 0.0)
        sigma_now = np.sqrt(self.variance[rows])[:, None]
        sigma_then = self.sigma_at[rows][:, cols]
        scale = np.where(have & (sigma_then > 0) & np.isfinite(sigma_now), sigma_now / sigma_then, 1.0)
        return np.where(have, scenario_growth(shocks, scale) * np.exp(mu) + np.expm1(mu), 0.0), have
