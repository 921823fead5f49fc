"""Simulated loan and trading books: loan applications with outcomes months later
(``loan_book``), market ticks (``market_ticks``) and portfolio positions (``trading_positions``)."""

from __future__ import annotations
import numpy as np
from riskstream.schemas.events import DAY_MS
from riskstream.sim_world import EQUITY_SESSION_MS, INSTRUMENTS, MINUTE_MS, POSITION_COLUMNS, World, time_of_day


# ==========================================================================================
# credit
# ==========================================================================================
def loan_book(rng, w: World, start_ms, end_ms, seed: int, customer_ids: np.ndarray) -> tuple[dict, dict]:
    days = (end_ms - start_ms) / DAY_MS
    n = int(rng.poisson(w.customers * days / 120))  # a customer applies about every four months
    day = rng.integers(start_ms // DAY_MS, (end_ms - 1) // DAY_MS + 1, n)
    t = np.clip(day * DAY_MS + time_of_day(rng, n), start_ms, end_ms - 1)
    order = np.argsort(t, kind="stable")
    t = t[order]
    cust = rng.integers(0, w.customers, n)
    income = np.round(rng.lognormal(np.log(38_000), 0.5, n), -2)
    debt_ratio = rng.beta(2, 5, n) * 1.2
    existing_debt = np.round(income * debt_ratio, -1)
    amount = np.round(np.clip(rng.lognormal(np.log(12_000), 0.8, n), 500, 500_000), -1)
    term_months = np.array([12, 24, 36, 48, 60, 84, 120])[
        np.clip(np.searchsorted([3_000, 8_000, 15_000, 25_000, 40_000, 80_000], amount)
                + rng.integers(-1, 2, n), 0, 6)]
    # Scores track indebtedness loosely; the outcome depends on both and on the new burden.
    credit_score = np.clip(np.round(800 - 260 * debt_ratio + rng.normal(0, 55, n)), 300, 850).astype(np.int64)
    burden = (existing_debt + amount) / income
    logit = -2.6 + 1.1 * (burden - 0.7) - 0.012 * (credit_score - 650)
    defaulted = rng.random(n) < 1 / (1 + np.exp(-logit))
    ids = np.array([f"app-{seed}-{i:07d}" for i in range(n)], dtype=object)
    apps = dict(application_id=ids, event_time=t.astype(np.int64), customer_id=customer_ids[cust],
                amount=amount, income=income, term_months=term_months.astype(np.int64),
                existing_debt=existing_debt, credit_score=credit_score)
    bureau_clock = min(1.0, days / 730)
    delay = np.where(defaulted, rng.uniform(60, 365, n), np.minimum(term_months * 30.4, 365)) * DAY_MS * bureau_clock
    label_time = t + delay.astype(np.int64)
    known = label_time < end_ms
    m = int(known.sum())
    labels = dict(event_id=ids[known], stream=np.full(m, "loan_applications", dtype=object),
                  label=np.where(defaulted[known], "default", "repaid").astype(object),
                  is_positive=defaulted[known].astype(np.int8), label_time=label_time[known],
                  entity_id=customer_ids[cust[known]], source=np.full(m, "bureau", dtype=object))
    return apps, labels


# ==========================================================================================
# market and positions
# ==========================================================================================
def market_ticks(rng, start_ms, end_ms) -> tuple[dict, list[tuple[np.ndarray, np.ndarray]]]:
    first_minute = -(-start_ms // MINUTE_MS) * MINUTE_MS
    minutes = np.arange(first_minute, end_ms, MINUTE_MS, dtype=np.int64)
    tod = minutes % DAY_MS
    weekday = (minutes // DAY_MS + 3) % 7
    session = minutes[(weekday < 5) & (tod >= EQUITY_SESSION_MS[0]) & (tod < EQUITY_SESSION_MS[1])]
    always = minutes[minutes % (5 * MINUTE_MS) == 0]
    session_bars_year = 252 * (EQUITY_SESSION_MS[1] - EQUITY_SESSION_MS[0]) / MINUTE_MS
    series = []
    names, times, prices, volumes = [], [], [], []
    for name, p0, vol, around_the_clock in INSTRUMENTS:
        bars = always if around_the_clock else session
        per_year = 365.25 * 288 if around_the_clock else session_bars_year
        sigma = vol / np.sqrt(per_year)
        n = len(bars)
        ret = -0.5 * sigma**2 + sigma * rng.standard_normal(n)
        # Jumps: about one per two weeks of trading, a few daily moves in size.
        jumps = rng.random(n) < 1 / (10 * per_year / 252)
        ret[jumps] += rng.normal(0, 4 * vol / np.sqrt(252), int(jumps.sum()))
        price = p0 * np.exp(np.cumsum(ret))
        price = np.round(price, 6 if p0 < 10 else 4)
        base_volume = 2e6 / p0
        volume = np.round(base_volume * rng.lognormal(0, 0.6, n) * (1 + 2 * np.abs(ret) / sigma), 4 if p0 > 1000 else 0)
        series.append((bars, price))
        names.append(np.full(n, name, dtype=object))
        times.append(bars)
        prices.append(price)
        volumes.append(volume)
    t = np.concatenate(times)
    order = np.argsort(t, kind="stable")
    market = dict(instrument=np.concatenate(names)[order], event_time=t[order],
                  price=np.concatenate(prices)[order], volume=np.concatenate(volumes)[order])
    return market, series


def trading_positions(rng, series, customers: int, days: float) -> dict:
    """Portfolios open positions at the first tick and trade a few times a day; now and then a
    desk trades ten times its usual size (what limit rules are for)."""
    n_portfolios = 10 + customers // 1000
    names, times, quantities, prices = [], [], [], []
    for p in range(n_portfolios):
        held = rng.choice(len(INSTRUMENTS), size=int(rng.integers(3, 7)), replace=False)
        for k in np.sort(held):
            bars, price = series[k]
            if len(bars) == 0:
                continue
            trades = int(rng.poisson(2 * days))
            at = np.concatenate([[0], np.sort(rng.integers(0, len(bars), trades))])
            q0 = rng.lognormal(np.log(1e6), 0.8) / price[0]
            delta = q0 * rng.normal(0, 0.15, len(at))
            delta[rng.random(len(at)) < 0.02] *= 10
            delta[0] = q0
            whole = INSTRUMENTS[k][1] < 1000  # shares trade in units, crypto in fractions
            qty = np.round(np.cumsum(delta), 0 if whole else 4)
            names.append(np.full(len(at), f"PF{p:03d}|{INSTRUMENTS[k][0]}", dtype=object))
            times.append(bars[at])
            quantities.append(qty)
            prices.append(price[at])
    if not times:
        return empty_columns(POSITION_COLUMNS)
    t = np.concatenate(times)
    order = np.argsort(t, kind="stable")
    pairs = np.concatenate(names)[order]
    return dict(portfolio_id=np.array([s.split("|")[0] for s in pairs], dtype=object),
                instrument=np.array([s.split("|")[1] for s in pairs], dtype=object),
                event_time=t[order], quantity=np.concatenate(quantities)[order],
                price=np.concatenate(prices)[order])


def empty_columns(columns: dict[str, str]) -> dict[str, np.ndarray]:
    return {name: np.empty(0, dtype=object if kind == "str" else kind) for name, kind in columns.items()}
