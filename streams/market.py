"""Market risk on the streams: live P&L, VaR/ES and limits from ticks and positions.

:class:`InstrumentBook` keeps, per instrument in numpy arrays, the last price, the previous
day's close and a ring of daily log returns by UTC calendar day with the EWMA volatility
forecast of each day. :class:`MarketRiskProcessor` keeps the positions of every portfolio and,
when a batch moves prices or positions, refreshes the figures of the portfolios (and desks)
it touches: value, P&L since the day's start, drawdown, gross and net exposure,
concentration, and one-day VaR and ES at 95% and 99% from the joint history of the
portfolio's instruments (filtered historical simulation: each past day's return rescaled by
the instrument's volatility now over its volatility then; ``detectors.portfolio_kernels``).

Limits (``rules.limits``) are checked at every refresh. A breach, or a near-breach at the
limit's utilisation, raises an alert with severity; a breach also issues a control (Redis
``rs:limit:<scope>:<id>`` and the ``limits`` topic), which is cleared, and the clearance
published, when the figure comes back under the limit. Figures go to ``portfolio_risk`` at
most once per ``risk_refresh_interval_s`` of event time per portfolio; limit states to
``limit_utilisation`` when they change and with every figures row.

All of it lives with one worker: the ``market`` and ``positions`` topics have one partition
each, which the range assignor gives to the same worker, and the state follows that
partition on a rebalance (``streams.reader.FollowPartitions``, ``streams.state``).
"""

from __future__ import annotations

import math
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
from riskstream.detectors.drift import ADWIN

from riskstream.detectors.portfolio_kernels import portfolio_figures
from riskstream.rules.limits import Limit, LimitSet, load_limits
from riskstream.schemas.events import DAY_MS, DeadLetter
from riskstream.settings import ConfigError, Settings
from riskstream.streams.instrument_book import InstrumentBook, VolatilityFits
from riskstream.streams.outputs import Outputs

MIN_HISTORY_DAYS = 20  # scenario days before VaR and ES mean anything
CONTROL_HOURS = 24.0  # a breach control lasts this long unless renewed or cleared
REGIME_UNIT = 0.05  # a 5% daily move: the scale absolute returns are fed to ADWIN in
NEAR_REARM = 0.05  # utilisation must fall this far below the near line before near is left


class MarketRiskProcessor:
    """Market ticks and positions: stored, and turned into portfolio figures and limit controls."""

    def __init__(self, settings: Settings, tables: dict[str, str]):
        self.settings = settings
        self.tables = tables  # stream -> ClickHouse table
        fits = None
        if settings.market_volatility == "gjr":
            fits = VolatilityFits(settings.market_refit_days, settings.market_fit_min_returns,
                                  background=settings.market_refit_background)
        self.book = InstrumentBook(settings.market_history_days, settings.market_ewma_lambda, fits)
        self.refresh_ms = int(settings.risk_refresh_interval_s * 1000)
        self.limits = load_limits_file(settings.limits_file) if settings.limits_file else LimitSet("none", ())
        self.positions: dict[str, dict[str, float]] = {}
        self.desk_of: dict[str, str] = {}
        self.desk_members: dict[str, set[str]] = {}
        self.holders: dict[str, set[str]] = {}
        self.peak_value: dict[str, float] = {}
        self.last_row_ms: dict[str, int] = {}
        self.limit_state: dict[tuple[str, str], str] = {}  # (limit id, entity) -> ok | near | breach
        self.figures: dict[tuple[str, str], dict[str, float]] = {}  # (scope, entity) -> latest figures
        self._layout: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # portfolio -> (slots, qty), until it trades
        self.regimes: dict[int, Any] = {}  # instrument slot -> ADWIN over its absolute daily returns
        self.market_ms = 0  # event time the prices have reached
        self.waiting_positions: list[dict[str, Any]] = []  # positions later than the prices, until they catch up

    # ----- the processor contract --------------------------------------------------------
    def process(self, stream: str, rows: list[dict[str, Any]], dead: list[DeadLetter]) -> Outputs:
        out = Outputs(stream, rows={self.tables[stream]: rows}, dead=dead)
        if not rows:
            return out
        touched: set[str] = set()
        if stream == "market":
            tick = self.book.tick
            for row in rows:
                tick(row["instrument"], row["event_time"] // DAY_MS, row["price"])
            self.book.apply_fits()  # refits that are ready (in line: those these ticks asked for)
            for name in {row["instrument"] for row in rows}:
                touched |= self.holders.get(name, set())
            self.market_ms = max(self.market_ms, max(r["event_time"] for r in rows))
            self._watch_regimes(out)
        else:
            self.waiting_positions += rows
        # A position counts from its time on: it waits until the prices reach that time (topics
        # are read at their own pace, and a replayed backlog of positions would otherwise be
        # applied all at once, ahead of the ticks that value it). With no prices at all, at once.
        if self.waiting_positions:
            due = [r for r in self.waiting_positions if r["event_time"] <= self.market_ms or not self.market_ms]
            if due:
                self.waiting_positions = [r for r in self.waiting_positions
                                          if not (r["event_time"] <= self.market_ms or not self.market_ms)]
                for row in sorted(due, key=lambda r: r["event_time"]):
                    # Each update is checked on its own, at its own time (the figures' rows and
                    # controls are keyed by it): a breach and its clearance read in one batch
                    # both count.
                    pf = self._position(row)
                    self.refresh({pf}, row["event_time"], out)
                    touched.discard(pf)
        if touched:
            now_ms = max(self.market_ms, max(r["event_time"] for r in rows) if stream == "market" else 0)
            self.refresh(touched, now_ms or max(r["event_time"] for r in rows), out)
        return out

    def _watch_regimes(self, out: Outputs) -> None:
        """A volatility-regime change: River's ADWIN over each instrument's absolute daily
        returns detects a shift in their mean; a shift up is an alert for the desk. ADWIN's
        bound assumes values in [0, 1], so a return is fed as a share of a 5% move (capped):
        fed raw, daily returns are too small for it ever to detect anything."""
        closed, self.book.closed = self.book.closed, []
        names = {slot: name for name, slot in self.book.slots.items()} if closed else {}
        for slot, day, r in closed:
            detector = self.regimes.get(slot)
            if detector is None:
                detector = self.regimes[slot] = ADWIN(delta=0.002, clock=1)
            before = detector.estimation * REGIME_UNIT
            detector.update(min(1.0, abs(r) / REGIME_UNIT))
            now = detector.estimation * REGIME_UNIT
            if detector.drift_detected and now > before:
                name = names[slot]
                ratio = now / before if before > 0 else math.inf
                out.alerts.append({
                    "alert_id": f"regime:{name}:{day}", "event_id": "", "stream": "market", "entity_id": name,
                    "event_time": (day + 1) * DAY_MS / 1000.0, "raised_at": time.time(),
                    "kind": "market_volatility_regime", "severity": float(min(ratio, 10.0)),
                    "severity_level": "high" if ratio >= 2 else "medium", "score": float(min(1.0, ratio / 4)),
                    "amount_at_risk": 0.0,
                    "reasons": [f"VOLATILITY_REGIME: {name}'s mean absolute daily return rose to "
                                f"{now:.2%} from {before:.2%} (ADWIN, window {detector.width:.0f} days)"],
                    "rules_version": self.limits.version,
                })

    def labels_arrived(self, labels: list[dict[str, Any]]) -> None:
        pass

    def learn(self, labels: list[dict[str, Any]]) -> int:
        return 0

    def checkpoint(self) -> bytes:
        keep = ("book", "positions", "desk_of", "desk_members", "holders", "peak_value", "last_row_ms", "limit_state", "regimes",
                "market_ms", "waiting_positions")
        return pickle.dumps({k: getattr(self, k) for k in keep}, protocol=5)

    def restore(self, blob: bytes) -> None:
        self.close()
        for k, v in pickle.loads(blob).items():  # our own checkpoints only (detectors.base)
            setattr(self, k, v)

    def close(self) -> None:
        """Stop the helper process of the volatility refits (fits in flight are asked again
        after a restore)."""
        if self.book.fits is not None:
            self.book.fits.shutdown()

    def reset(self) -> None:
        """Start empty, keeping the limit set in force: the market partition, and the state
        with it, went to another worker."""
        limits = self.limits
        self.close()
        self.__init__(self.settings, self.tables)
        self.limits = limits

    def set_limits(self, limits: LimitSet) -> None:
        """Swap the limit set in (a hot reload); states of limits that stay are kept."""
        ids = {lim.id for lim in limits.limits}
        self.limit_state = {k: v for k, v in self.limit_state.items() if k[0] in ids}
        self.limits = limits

    # ----- positions ---------------------------------------------------------------------
    def _position(self, row: dict[str, Any]) -> str:
        pf, instrument = row["portfolio_id"], row["instrument"]
        desk = row.get("desk")
        if desk and self.desk_of.get(pf) != desk:
            self.desk_members.get(self.desk_of.get(pf, ""), set()).discard(pf)
            self.desk_of[pf] = desk
            self.desk_members.setdefault(desk, set()).add(pf)
        book = self.positions.setdefault(pf, {})
        self._layout.pop(pf, None)
        if row["quantity"] == 0:
            book.pop(instrument, None)
            self.holders.get(instrument, set()).discard(pf)
        else:
            book[instrument] = float(row["quantity"])
            self.holders.setdefault(instrument, set()).add(pf)
        slot = self.book.slot(instrument)
        if math.isnan(self.book.last_price[slot]) and row.get("price"):
            self.book.tick(instrument, row["event_time"] // DAY_MS, row["price"])
        return pf

    # ----- figures -----------------------------------------------------------------------
    def layout(self, pf: str) -> tuple[np.ndarray, np.ndarray]:
        """A portfolio's instrument slots and quantities as arrays, kept until it trades."""
        cached = self._layout.get(pf)
        if cached is None:
            book = self.positions.get(pf, {})
            slots = np.fromiter((self.book.slot(i) for i in book), np.int64, len(book))
            cached = self._layout[pf] = (slots, np.fromiter(book.values(), np.float64, len(book)))
        return cached

    def refresh(self, portfolios: set[str], now_ms: int, out: Outputs) -> None:
        """Figures and limit checks of these portfolios, their desks and instruments."""
        order = sorted(portfolios)
        desks: set[str] = set()
        for pf, fig in zip(order, self._figures([self.layout(pf) for pf in order], now_ms)):
            if fig is None:
                continue
            self._finish(pf, fig)
            self.figures[("portfolio", pf)] = fig
            desk = self.desk_of.get(pf, "")
            if desk:
                desks.add(desk)
            if now_ms - self.last_row_ms.get(pf, -self.refresh_ms) >= self.refresh_ms:
                self.last_row_ms[pf] = now_ms
                out.rows.setdefault("portfolio_risk", []).append({
                    "portfolio_id": pf, "desk": desk, "measured_at": now_ms / 1000.0,
                    "model": self._model_of(self.layout(pf)[0]),
                    **{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in fig.items()
                       if k not in ("loss_day",)}})
            self._check("portfolio", pf, fig, now_ms, out)
        desk_order = sorted(desks)  # every portfolio of a desk that moved
        desk_layouts = []
        for desk in desk_order:
            members = [self.layout(p) for p in sorted(self.desk_members[desk])]
            desk_layouts.append((np.concatenate([s for s, _ in members]), np.concatenate([q for _, q in members])))
        for desk, fig in zip(desk_order, self._figures(desk_layouts, now_ms, by_name=True)):
            if fig is None:
                continue
            self._finish(f"desk:{desk}", fig)
            self.figures[("desk", desk)] = fig
            self._check("desk", desk, fig, now_ms, out)
        self._check_instruments(portfolios, now_ms, out)

    def _figures(self, layouts: list[tuple[np.ndarray, np.ndarray]], now_ms: int,
                 by_name: bool = False) -> list[dict[str, float] | None]:
        """Figures of each (slots, quantities) layout in one kernel pass (``portfolio_figures``);
        None for one with nothing priced. ``by_name``: concentration over instruments summed
        across the layout's positions (a desk holds the same name in several portfolios)."""
        growth, history = self.book.window(now_ms // DAY_MS)
        n = len(self.book.slots)
        last_price = self.book.last_price[:n]
        reference = np.where(np.isnan(self.book.prev_close[:n]), last_price, self.book.prev_close[:n])
        offsets = np.zeros(len(layouts) + 1, np.int64)
        np.cumsum([len(s) for s, _ in layouts], out=offsets[1:])
        slots = np.concatenate([s for s, _ in layouts]) if layouts else np.zeros(0, np.int64)
        qty = np.concatenate([q for _, q in layouts]) if layouts else np.zeros(0)
        table = np.empty((len(layouts), 9))
        portfolio_figures(offsets, slots, qty, last_price, reference, growth, table)
        known = history >= MIN_HISTORY_DAYS
        out: list[dict[str, float] | None] = []
        for (s, q), (value, ref_value, gross, largest, var95, es95, var99, es99, priced) in zip(layouts, table.tolist()):
            if not priced:
                out.append(None)
                continue
            if by_name:
                values = np.nan_to_num(q * last_price[s])
                largest = float(np.abs(np.bincount(s, weights=values)).max())
            out.append({"value": value, "pnl_day": value - ref_value, "gross": gross, "net": value,
                        "concentration": largest / gross if gross else 0.0,
                        "var_95": var95 if known else math.nan, "var_99": var99 if known else math.nan,
                        "es_95": es95 if known else math.nan, "es_99": es99 if known else math.nan})
        return out

    def _model_of(self, slots: np.ndarray) -> str:
        """The volatility filter behind a portfolio's scenarios: GJR-GARCH once every
        instrument has its fit, EWMA before, both while some have."""
        fitted = self.book.gjr[slots]
        return "fhs-gjr" if fitted.all() and len(slots) else "fhs-ewma" if not fitted.any() else "fhs-gjr+ewma"

    def _finish(self, key: str, fig: dict[str, float]) -> None:
        """Drawdown from the peak value, and the day's loss (the stop-loss metric)."""
        self.peak_value[key] = max(self.peak_value.get(key, fig["value"]), fig["value"])
        fig["drawdown"] = self.peak_value[key] - fig["value"]
        fig["loss_day"] = max(0.0, -fig["pnl_day"])

    def _check_instruments(self, portfolios: set[str], now_ms: int, out: Outputs) -> None:
        if not any(lim.scope == "instrument" for lim in self.limits.limits):
            return
        names = {i for pf in portfolios for i in self.positions.get(pf, {})}
        for name in sorted(names):
            price = self.book.last_price[self.book.slots[name]]
            qty = [self.positions[pf][name] for pf in self.holders.get(name, ())]
            fig = {"position": abs(sum(qty)), "gross": float(np.nansum(np.abs(qty) * price))}
            self._check("instrument", name, fig, now_ms, out)

    # ----- limits ------------------------------------------------------------------------
    def _check(self, scope: str, entity: str, fig: dict[str, float], now_ms: int, out: Outputs) -> None:
        for lim in self.limits.for_entity(scope, entity):
            value = fig.get(lim.metric, math.nan)
            if math.isnan(value):
                continue
            utilisation = value / lim.limit
            state = "breach" if utilisation >= 1.0 else "near" if utilisation >= lim.near else "ok"
            key = (lim.id, entity)
            before = self.limit_state.get(key, "ok")
            if before == "near" and state == "ok" and utilisation >= lim.near - NEAR_REARM:
                state = "near"  # a figure wavering at the near line is one warning, not one per tick
            if state == before:
                continue
            self.limit_state[key] = state
            shown = "cleared" if state == "ok" and before == "breach" else state
            out.rows.setdefault("limit_utilisation", []).append({
                "entity_type": scope, "entity_id": entity, "limit_id": lim.id, "metric": lim.metric,
                "value": value, "limit_value": lim.limit, "utilisation": utilisation, "state": shown,
                "measured_at": now_ms / 1000.0, "limits_version": self.limits.version})
            if state in ("near", "breach") and (state == "breach" or before == "ok"):
                out.alerts.append(_limit_alert(lim, scope, entity, value, utilisation, state, fig, now_ms,
                                               self.limits.version))
            if lim.action == "alert_only":
                continue
            if state == "breach":
                out.limits.append(_control(lim, scope, entity, value, now_ms, self.limits.version))
            elif before == "breach":
                out.limits.append(_control(lim, scope, entity, value, now_ms, self.limits.version, clear=True))


def _limit_alert(lim: Limit, scope: str, entity: str, value: float, utilisation: float, state: str,
                 fig: dict[str, float], now_ms: int, version: str) -> dict[str, Any]:
    # Likelihood: how far into the limit; impact: the exposure at stake.
    exposure = fig.get("gross", 0.0)
    level = "critical" if utilisation >= 1.5 else "high" if state == "breach" else "medium"
    return {
        "alert_id": f"limit:{lim.id}:{entity}:{state}:{now_ms}", "event_id": "", "stream": "market",
        "entity_id": f"{scope}:{entity}", "event_time": now_ms / 1000.0, "raised_at": time.time(),
        "kind": f"limit_{state}", "severity": float(min(utilisation, 2.0) * exposure), "severity_level": level,
        "score": float(min(utilisation, 1.0)), "amount_at_risk": float(exposure),
        "reasons": [f"LIMIT_{state.upper()}: {lim.metric} {value:,.0f} is {utilisation:.0%} of the {lim.id} "
                    f"limit {lim.limit:,.0f} ({scope} {entity})"],
        "rules_version": version,
    }


def _control(lim: Limit, scope: str, entity: str, value: float, now_ms: int, version: str,
             clear: bool = False) -> dict[str, Any]:
    return {
        "entity_type": scope, "entity_id": entity,
        "action": "clear" if clear else lim.action,
        "max_amount": 0.0 if lim.action == "block_new_risk" or clear else lim.limit,
        "valid_until": now_ms / 1000.0 + (0.0 if clear else CONTROL_HOURS * 3600),
        "reason": (f"{lim.id}: {lim.metric} {value:,.0f} back under {lim.limit:,.0f}" if clear
                   else f"{lim.id}: {lim.metric} {value:,.0f} over {lim.limit:,.0f}")[:500],
        "event_id": f"{lim.id}:{entity}:{now_ms}", "issued_at": time.time(), "rules_version": version,
    }


def load_limits_file(path: str) -> LimitSet:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"limits_file {p}: not found (RISKSTREAM_LIMITS_FILE).")
    from riskstream.rules.limits import LimitSetError

    try:
        return load_limits(p.read_text(), str(p))
    except LimitSetError as exc:
        raise ConfigError(str(exc)) from None
