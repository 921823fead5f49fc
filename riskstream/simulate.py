"""Seeded synthetic input streams: card transactions with labelled fraud, delayed labels,
market ticks, portfolio positions and loan applications.

The card model follows the well-known transaction-simulator design (Le Borgne et al.,
*Reproducible Machine Learning for Credit Card Fraud Detection*): customers and terminals
live on a 100x100 grid, a customer shops at terminals within a radius of home, amounts are
drawn around a per-customer mean, most activity falls in business hours and the week has a
shape (busy Friday/Saturday, quiet Sunday). On top of that:

* the grid is laid over central Europe (one unit is ~11 km), so every transaction has a real
  ``lat``/``lon`` and an ISO-2 ``country``; cities abroad host terminals for travellers and
  fraudsters;
* merchants own several terminals and have an MCC that sets the typical ticket; a customer has
  1-2 cards, 1-2 devices and a home ip, and sometimes travels (domestic or abroad);
* legit noise that overlaps with fraud on purpose: occasional big purchases, micro-payments,
  new devices, trips abroad, so that no single column gives the fraud away.

``amount`` is in the cardholder's billing currency (EUR) as on an issuer's authorisation feed;
``currency`` is the merchant's local currency. ``country``/``lat``/``lon`` are where the
payment happened: the terminal, or for ``ecom`` the geolocated ip.

Fraud scenarios (``fraud_scenario``; share of the fraud budget):

``card_testing`` (20%)
    a stolen card gets a burst of 3-15 ecom payments of 0-3 EUR within minutes, from a
    fraudster's device/ip, often (60%) followed by one large payment within two hours.
``compromised_terminal`` (25%)
    a POS terminal is compromised for 1-4 weeks (scaled down in spans under 12 weeks) and
    30-60% of its payments in that window are fraud, at normal amounts: only the terminal's
    fraud history gives them away.
``account_takeover`` (25%)
    for 1-4 days a card spends 3-10x its usual mean, online, from a new device and ip.
``high_amount`` (10%)
    an isolated payment of 5-15x the card's mean (near home or online).
``geo_impossible`` (20%)
    a cloned card is used 2-45 minutes after a genuine payment, hundreds of km away or in
    another country (the speed follows from ``lat``/``lon`` and ``event_time``).

Fraudsters reuse devices and ips across victims, as rings do.

Labels (the ``labels`` stream, what the bank learns and when):

* every fraudulent transaction gets a positive label: for 35% of the cases an analyst
  confirms it (``analyst_fraud``) 30 minutes to 2 days after the case's last payment; the
  rest come back as a ``chargeback`` 2-30 days later. A card-testing, takeover or cloning
  case is labelled as a whole when the card is blocked.
* a sample of legit traffic gets ``analyst_legit`` within 1-48 hours: 0.2% at random, 10% of
  what looks suspicious (amount > 3x the card's mean, foreign country, unknown device).
* loan outcomes (``default``/``repaid``, source ``bureau``) arrive 2-12 months after the
  application; spans shorter than two years run the bureau clock faster (delay x days/730),
  so that applications from the first half of the span have their outcome by its end.
* Labels whose ``label_time`` falls after the end of the span are dropped: the labels stream
  is what the engine would have seen by then. With the 2-30 day chargeback delay, a 7-day
  span labels about a third of its frauds, a 28-day span about 70%; ``is_fraud`` stays the
  full ground truth.

Speed, all streams on, measured on the shared 2-core build machine (numpy 2.4) with
``riskstream simulate --days D --customers C --terminals T --out x.parquet``:

* 7 days x 5,700 customers, 1,000 terminals: 99k transactions generated in 0.3 s (~300k/s);
  1.9 s for the whole command including the Parquet files;
* 28 days x 29,000 customers, 5,000 terminals: 2.04M transactions generated in 10.6 s wall
  (~190k/s; 7 s of CPU, the rest was other jobs on the machine), 0.74 GB peak RSS; writing
  the Parquet files adds ~10 s. Most of the time goes into Python ``str`` objects for the id
  columns, which ``TransactionBatch.from_columns`` wants.

Example
-------
>>> sim = simulate(days=3, customers=300, terminals=60, seed=1)
>>> tx = sim.transactions
>>> bool((np.diff(tx["event_time"]) >= 0).all()), set(np.unique(tx["channel"])) <= {"pos", "ecom", "atm"}
(True, True)
>>> sorted(sim.scenario_counts()) == sorted(SCENARIOS)
True
>>> import pathlib, tempfile
>>> written = write_simulation(sim, pathlib.Path(tempfile.mkdtemp()) / "tx.parquet")
>>> [p.name for p in written]  # doctest: +NORMALIZE_WHITESPACE
['tx.parquet', 'tx.labels.parquet', 'tx.market.parquet', 'tx.positions.parquet',
 'tx.loan_applications.parquet']

From the shell, the same with progress and a summary::

    riskstream simulate --days 3 --customers 300 --terminals 60 --seed 1 --out tx.parquet
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from riskstream.schemas.events import DAY_MS, HOUR_MS

MINUTE_MS = 60_000
# A fixed default start keeps identical arguments giving identical output; 2024-01-01 was a Monday.
DEFAULT_START_MS = 1_704_067_200_000
DEFAULT_FRAUD_RATE = 0.007

SCENARIOS = ("card_testing", "compromised_terminal", "account_takeover", "high_amount", "geo_impossible")
CARD_TESTING, COMPROMISED_TERMINAL, ACCOUNT_TAKEOVER, HIGH_AMOUNT, GEO_IMPOSSIBLE = range(1, 6)
SCENARIO_NAMES = ("",) + SCENARIOS
SCENARIO_SHARE = np.array([0.20, 0.25, 0.25, 0.10, 0.20])

CHANNELS = ("pos", "ecom", "atm")
POS, ECOM, ATM = 0, 1, 2

# Column -> kind; the engine's input schema (schemas/events.py) plus ground truth.
TRANSACTION_COLUMNS = {
    "transaction_id": "str", "event_time": "int64", "card_id": "str", "customer_id": "str",
    "terminal_id": "str", "merchant_id": "str", "amount": "float64", "currency": "str",
    "country": "str", "channel": "str", "mcc": "str", "device_id": "str", "ip": "str",
    "lat": "float64", "lon": "float64", "is_fraud": "int8", "fraud_scenario": "str",
}
LABEL_COLUMNS = {
    "event_id": "str", "stream": "str", "label": "str", "is_positive": "int8",
    "label_time": "int64", "entity_id": "str", "source": "str",
}
MARKET_COLUMNS = {"instrument": "str", "event_time": "int64", "price": "float64", "volume": "float64"}
POSITION_COLUMNS = {
    "portfolio_id": "str", "instrument": "str", "event_time": "int64", "quantity": "float64",
    "price": "float64",
}
LOAN_COLUMNS = {
    "application_id": "str", "event_time": "int64", "customer_id": "str", "amount": "float64",
    "income": "float64", "term_months": "int64", "existing_debt": "float64", "credit_score": "int64",
}
STREAM_COLUMNS = {
    "transactions": TRANSACTION_COLUMNS,
    "labels": LABEL_COLUMNS,
    "market": MARKET_COLUMNS,
    "positions": POSITION_COLUMNS,
    "loan_applications": LOAN_COLUMNS,
}

# --- geography ---------------------------------------------------------------------------
GRID = 100.0
# Grid y=0 is the northern edge; one unit is ~11 km either way at these latitudes.
LAT_TOP, LAT_STEP = 53.5, 0.10
LON_LEFT, LON_STEP = 1.0, 0.16
# Countries sharing the grid, by a rough centre; a grid point belongs to the nearest centre.
GRID_COUNTRIES = [
    ("FR", 47.0, 3.5), ("BE", 50.6, 4.6), ("NL", 52.2, 5.6), ("LU", 49.7, 6.1),
    ("DE", 51.0, 10.2), ("DE", 48.7, 11.0), ("CH", 46.8, 8.2), ("AT", 47.5, 14.5),
    ("IT", 45.0, 10.0), ("CZ", 49.8, 15.0),
]
# Cities off the grid: (country, lat, lon, weight as a travel destination, weight as a fraudster's base).
# The two weightings overlap so that "abroad" alone is not fraud.
FOREIGN_CITIES = [
    ("ES", 40.42, -3.70, 0.25, 0.05), ("PT", 38.72, -9.14, 0.10, 0.04),
    ("GB", 51.51, -0.13, 0.20, 0.15), ("TR", 41.01, 28.97, 0.10, 0.10),
    ("US", 40.71, -74.01, 0.09, 0.12), ("US", 25.76, -80.19, 0.06, 0.08),
    ("TH", 13.75, 100.50, 0.08, 0.10), ("AE", 25.20, 55.27, 0.07, 0.06),
    ("BR", -23.55, -46.63, 0.03, 0.15), ("NG", 6.52, 3.38, 0.02, 0.15),
]
CURRENCY = {
    "FR": "EUR", "BE": "EUR", "NL": "EUR", "LU": "EUR", "DE": "EUR", "AT": "EUR", "IT": "EUR",
    "ES": "EUR", "PT": "EUR", "CH": "CHF", "CZ": "CZK", "GB": "GBP", "TR": "TRY", "US": "USD",
    "TH": "THB", "AE": "AED", "BR": "BRL", "NG": "NGN",
}
COUNTRIES = tuple(dict.fromkeys([c for c, *_ in GRID_COUNTRIES] + [c for c, *_ in FOREIGN_CITIES]))
_COUNTRY_INDEX = {c: i for i, c in enumerate(COUNTRIES)}

# --- merchants ---------------------------------------------------------------------------
# (mcc, share of merchants, typical ticket relative to the cardholder's mean)
POS_MCCS = [
    ("5411", 0.30, 1.0), ("5812", 0.14, 0.9), ("5814", 0.08, 0.35), ("5541", 0.10, 1.3),
    ("5912", 0.08, 0.6), ("5651", 0.09, 1.7), ("5311", 0.08, 1.5), ("5732", 0.05, 3.0),
    ("7523", 0.08, 0.2),
]
ECOM_MCCS = [
    ("5999", 0.22, 1.2), ("5964", 0.15, 1.3), ("5815", 0.15, 0.15), ("5816", 0.08, 0.3),
    ("4121", 0.12, 0.45), ("5732", 0.10, 3.0), ("4511", 0.08, 5.0), ("7011", 0.07, 3.5),
    ("8398", 0.03, 0.5),
]
ATM_MCC = "6011"
MCCS = tuple(dict.fromkeys([m for m, *_ in POS_MCCS] + [m for m, *_ in ECOM_MCCS] + [ATM_MCC]))
_MCC_INDEX = {m: i for i, m in enumerate(MCCS)}
# Card testers pick merchants where a 1 EUR charge goes unnoticed; cash-out goes to goods that resell.
CARD_TESTING_MCCS = ("5815", "5816", "8398", "5999")
CASH_OUT_MCCS = ("5732", "4511", "7011", "5999")

# Busy Friday/Saturday, quiet Sunday (Monday first).
WEEKLY = np.array([0.95, 0.95, 1.0, 1.0, 1.15, 1.2, 0.75])
POS_SLOTS = 16  # habitual shops per customer, visited with Zipf-like odds
ATM_SLOTS = 3
ECOM_FAVOURITES = 6
TARGET_NEARBY_TERMINALS = 20  # sets the shopping radius from the terminal density

# --- market ------------------------------------------------------------------------------
# (instrument, opening price, annual volatility, trades around the clock)
INSTRUMENTS = [
    ("ASML.AS", 620.0, 0.35, False), ("SAP.DE", 135.0, 0.25, False), ("SIE.DE", 170.0, 0.27, False),
    ("MC.PA", 780.0, 0.28, False), ("INGA.AS", 13.5, 0.30, False),
    ("EURUSD", 1.09, 0.07, True), ("BTC-EUR", 40_000.0, 0.65, True), ("ETH-EUR", 2_200.0, 0.80, True),
]
EQUITY_SESSION_MS = (8 * HOUR_MS, 16 * HOUR_MS + 30 * MINUTE_MS)  # UTC, weekdays


@dataclass
class Simulation:
    """All generated streams as columns (numpy arrays; strings are object arrays of ``str``)."""

    transactions: dict[str, np.ndarray]  # sorted by event_time
    labels: dict[str, np.ndarray]  # sorted by label_time
    market: dict[str, np.ndarray]
    positions: dict[str, np.ndarray]
    loan_applications: dict[str, np.ndarray]
    start_ms: int = DEFAULT_START_MS
    end_ms: int = DEFAULT_START_MS

    def streams(self) -> dict[str, dict[str, np.ndarray]]:
        return {name: getattr(self, name) for name in STREAM_COLUMNS}

    def scenario_counts(self) -> dict[str, int]:
        """Fraudulent transactions per scenario (every scenario listed, zero when absent)."""
        names, counts = np.unique(self.transactions["fraud_scenario"].astype(str), return_counts=True)
        found = dict(zip(names.tolist(), counts.tolist()))
        return {s: int(found.get(s, 0)) for s in SCENARIOS}


# ==========================================================================================
# helpers
# ==========================================================================================
def _grid_to_latlon(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return LAT_TOP - xy[:, 1] * LAT_STEP, LON_LEFT + xy[:, 0] * LON_STEP


def _grid_country(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    centres = np.array([(la, lo) for _, la, lo in GRID_COUNTRIES])
    # Longitude degrees shrink with latitude; 0.67 ~ cos(48 deg) keeps the borders roughly right.
    d = (lat[:, None] - centres[None, :, 0]) ** 2 + ((lon[:, None] - centres[None, :, 1]) * 0.67) ** 2
    codes = np.array([_COUNTRY_INDEX[c] for c, *_ in GRID_COUNTRIES], dtype=np.int16)
    return codes[np.argmin(d, axis=1)]


def _km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance (haversine), km."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(np.radians(lon2 - lon1) / 2) ** 2
    return 12_742.0 * np.arcsin(np.sqrt(np.minimum(a, 1.0)))


def _scramble64(index: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64 finaliser: a bijection, so distinct indices give distinct opaque ids and an id
    says nothing about whether it belongs to a customer or a fraudster."""
    z = index.astype(np.uint64) + np.uint64(salt & 0xFFFFFFFFFFFFFFFF) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _scramble32(index: np.ndarray, salt: int) -> np.ndarray:
    """murmur3 fmix32 (a bijection on 32 bits), for ip addresses."""
    h = (index.astype(np.uint64) + np.uint64(salt & 0xFFFFFFFF)) & np.uint64(0xFFFFFFFF)
    h = h.astype(np.uint32)
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


def _format_codes(codes: np.ndarray, fmt: Callable[[int], str], missing: int = -1) -> np.ndarray:
    """Object array of strings, formatting each distinct code once."""
    uniq, inverse = np.unique(codes, return_inverse=True)
    strings = np.array([("" if u == missing else fmt(u)) for u in uniq.tolist()] or [""], dtype=object)
    return strings[inverse] if len(codes) else np.empty(0, dtype=object)


def _ragged_arange(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + c) for each (s, c)."""
    counts = counts.astype(np.int64)
    total = int(counts.sum())
    offsets = np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(starts.astype(np.int64), counts) + (np.arange(total, dtype=np.int64) - offsets)


def _zipf_slots(rng: np.random.Generator, n: int, slots: int, exponent: float = 0.9) -> np.ndarray:
    w = 1.0 / np.arange(1, slots + 1) ** exponent
    return np.minimum(np.searchsorted(np.cumsum(w / w.sum()), rng.random(n)), slots - 1)


def _nearby(rng: np.random.Generator, points: np.ndarray, targets: np.ndarray, radius: float,
            slots: int) -> np.ndarray:
    """For each point, ``slots`` indices of targets within ``radius``, roughly nearest first
    (repeated when fewer are in reach; the nearest target when none is). Grid buckets keep this
    O(points x targets nearby) instead of a full distance matrix."""
    cells = max(1, int(np.ceil(GRID / radius)))
    tcx = np.clip((targets[:, 0] / radius).astype(np.int64), 0, cells - 1)
    tcy = np.clip((targets[:, 1] / radius).astype(np.int64), 0, cells - 1)
    tcell = tcx * cells + tcy
    order = np.argsort(tcell, kind="stable")
    sorted_cell = tcell[order]
    cell_ids = np.arange(cells * cells)
    cell_start = np.searchsorted(sorted_cell, cell_ids)
    cell_count = np.searchsorted(sorted_cell, cell_ids, side="right") - cell_start
    dx = np.repeat(np.arange(-1, 2), 3)
    dy = np.tile(np.arange(-1, 2), 3)
    out = np.empty((len(points), slots), dtype=np.int64)
    chunk = 20_000
    for lo in range(0, len(points), chunk):
        p = points[lo:lo + chunk]
        m = len(p)
        nx = np.clip((p[:, 0] / radius).astype(np.int64), 0, cells - 1)[:, None] + dx
        ny = np.clip((p[:, 1] / radius).astype(np.int64), 0, cells - 1)[:, None] + dy
        valid = (nx >= 0) & (nx < cells) & (ny >= 0) & (ny < cells)
        ncell = np.where(valid, nx * cells + ny, 0)
        cnt = np.where(valid, cell_count[ncell], 0).ravel()
        owner = np.repeat(np.arange(m * 9) // 9, cnt)
        cand = order[_ragged_arange(cell_start[ncell].ravel(), cnt)]
        d2 = ((p[owner] - targets[cand]) ** 2).sum(axis=1)
        keep = d2 <= radius * radius
        owner, cand = owner[keep], cand[keep]
        # Noisy distance order: the favourite shops are mostly, not always, the closest ones,
        # which keeps consecutive payments of a card plausibly close together.
        shuffled = np.lexsort((d2[keep] * rng.lognormal(0, 0.7, len(cand)), owner))
        owner, cand = owner[shuffled], cand[shuffled]
        per_point = np.bincount(owner, minlength=m)
        first = np.cumsum(per_point) - per_point
        idx = first[:, None] + np.arange(slots)[None, :] % np.maximum(per_point, 1)[:, None]
        block = cand[np.minimum(idx, max(len(cand) - 1, 0))] if len(cand) else np.zeros((m, slots), np.int64)
        lonely = np.flatnonzero(per_point == 0)
        if len(lonely):
            d = ((p[lonely, None, :] - targets[None, :, :]) ** 2).sum(axis=2)
            block[lonely] = np.argmin(d, axis=1)[:, None]
        out[lo:lo + m] = block
    return out


def _time_of_day(rng: np.random.Generator, n: int) -> np.ndarray:
    """Milliseconds after midnight UTC: mostly business hours (CET shops), some at night."""
    business = rng.normal(13.5 * HOUR_MS, 3.5 * HOUR_MS, n)
    anytime = rng.uniform(0, DAY_MS, n)
    return np.mod(np.where(rng.random(n) < 0.9, business, anytime), DAY_MS).astype(np.int64)


def _pick_weighted(rng: np.random.Generator, weights, n: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    return np.minimum(np.searchsorted(np.cumsum(w / w.sum()), rng.random(n)), len(w) - 1)


# ==========================================================================================
# the world: customers, cards, devices, merchants, terminals
# ==========================================================================================
@dataclass
class _World:
    cust_xy: np.ndarray
    cust_lat: np.ndarray
    cust_lon: np.ndarray
    cust_country: np.ndarray
    cust_mean: np.ndarray
    cust_std: np.ndarray
    cust_rate: np.ndarray
    cust_ecom: np.ndarray
    cust_devices: np.ndarray  # devices per customer (1-2); device index = 2 * customer + slot
    card_first: np.ndarray
    card_count: np.ndarray
    card_customer: np.ndarray
    term_channel: np.ndarray
    term_mcc: np.ndarray
    term_merchant: np.ndarray
    term_country: np.ndarray
    term_lat: np.ndarray
    term_lon: np.ndarray
    term_price: np.ndarray
    pos_terms: np.ndarray  # grid POS terminals
    atm_terms: np.ndarray  # grid ATMs
    ecom_terms: np.ndarray
    foreign_terms: np.ndarray
    foreign_city: np.ndarray  # city of each foreign terminal
    ecom_popularity: np.ndarray
    pos_near: np.ndarray  # (customers, POS_SLOTS) terminal indices
    atm_near: np.ndarray  # (customers, ATM_SLOTS)
    ecom_favourite: np.ndarray  # (customers, ECOM_FAVOURITES)
    pos_neighbours: np.ndarray  # (len(pos_terms), 8): where a traveller shops around a destination

    @property
    def customers(self) -> int:
        return len(self.cust_mean)

    @property
    def cards(self) -> int:
        return len(self.card_customer)


def _build_world(rng: np.random.Generator, customers: int, terminals: int) -> _World:
    c = customers
    cust_xy = rng.uniform(0, GRID, (c, 2))
    cust_lat, cust_lon = _grid_to_latlon(cust_xy)
    cust_mean = rng.uniform(5, 100, c)
    card_count = 1 + (rng.random(c) < 0.3).astype(np.int64)
    card_first = np.cumsum(card_count) - card_count

    n_cities = len(FOREIGN_CITIES)
    n_ecom = max(3, round(0.12 * terminals))
    n_foreign = max(n_cities, round(0.06 * terminals))
    n_atm = max(2, round(0.08 * terminals))
    n_pos = terminals - n_ecom - n_foreign - n_atm

    # Merchants own a few terminals spread around a region (a chain), each with one MCC.
    sizes = 1 + rng.geometric(0.45, n_pos)
    sizes = sizes[: int(np.searchsorted(np.cumsum(sizes), n_pos)) + 1]
    sizes[-1] -= sizes.sum() - n_pos
    n_pos_merchants = len(sizes)
    pos_merchant = np.repeat(np.arange(n_pos_merchants), sizes)
    merchant_xy = rng.uniform(0, GRID, (n_pos_merchants, 2))
    pos_xy = np.clip(merchant_xy[pos_merchant] + rng.normal(0, 4.0, (n_pos, 2)), 0, GRID - 1e-6)
    pos_mcc_choice = _pick_weighted(rng, [w for _, w, _ in POS_MCCS], n_pos_merchants)[pos_merchant]
    merchant_factor = rng.lognormal(0, 0.25, n_pos_merchants)[pos_merchant]

    n_banks = max(1, n_atm // 8)
    atm_merchant = n_pos_merchants + rng.integers(0, n_banks, n_atm)
    atm_xy = rng.uniform(0, GRID, (n_atm, 2))

    ecom_merchant = n_pos_merchants + n_banks + np.arange(n_ecom) // 2  # web shops with 1-2 acquiring terminals
    ecom_mcc_choice = _pick_weighted(rng, [w for _, w, _ in ECOM_MCCS], n_ecom)
    ecom_abroad = rng.random(n_ecom) < 0.2
    ecom_xy = rng.uniform(0, GRID, (n_ecom, 2))
    ecom_city = _pick_weighted(rng, [t for *_, t, _ in FOREIGN_CITIES], n_ecom)

    # Every city gets at least one terminal so that travellers and fraudsters always find one.
    foreign_city = np.concatenate([np.arange(n_cities),
                                   _pick_weighted(rng, [t for *_, t, _ in FOREIGN_CITIES], n_foreign - n_cities)])
    foreign_is_atm = rng.random(n_foreign) < 0.2
    foreign_mcc_choice = _pick_weighted(rng, [w for _, w, _ in POS_MCCS], n_foreign)
    foreign_merchant = ecom_merchant[-1] + 1 + np.arange(n_foreign)
    city_lat = np.array([la for _, la, *_ in FOREIGN_CITIES])
    city_lon = np.array([lo for _, _, lo, *_ in FOREIGN_CITIES])
    city_country = np.array([_COUNTRY_INDEX[cc] for cc, *_ in FOREIGN_CITIES], dtype=np.int16)

    pos_lat, pos_lon = _grid_to_latlon(pos_xy)
    atm_lat, atm_lon = _grid_to_latlon(atm_xy)
    e_lat, e_lon = _grid_to_latlon(ecom_xy)
    e_lat = np.where(ecom_abroad, city_lat[ecom_city], e_lat)
    e_lon = np.where(ecom_abroad, city_lon[ecom_city], e_lon)
    e_country = np.where(ecom_abroad, city_country[ecom_city], _grid_country(e_lat, e_lon))
    f_lat = city_lat[foreign_city] + rng.normal(0, 0.05, n_foreign)
    f_lon = city_lon[foreign_city] + rng.normal(0, 0.05, n_foreign)

    pos_mcc_idx = np.array([_MCC_INDEX[m] for m, *_ in POS_MCCS])
    pos_mcc_factor = np.array([f for *_, f in POS_MCCS])
    ecom_mcc_idx = np.array([_MCC_INDEX[m] for m, *_ in ECOM_MCCS])
    ecom_mcc_factor = np.array([f for *_, f in ECOM_MCCS])

    term_channel = np.concatenate([np.full(n_pos, POS), np.full(n_atm, ATM), np.full(n_ecom, ECOM),
                                   np.where(foreign_is_atm, ATM, POS)]).astype(np.int8)
    term_mcc = np.concatenate([pos_mcc_idx[pos_mcc_choice], np.full(n_atm, _MCC_INDEX[ATM_MCC]),
                               ecom_mcc_idx[ecom_mcc_choice],
                               np.where(foreign_is_atm, _MCC_INDEX[ATM_MCC], pos_mcc_idx[foreign_mcc_choice])])
    term_price = np.concatenate([pos_mcc_factor[pos_mcc_choice] * merchant_factor, np.ones(n_atm),
                                 ecom_mcc_factor[ecom_mcc_choice] * rng.lognormal(0, 0.25, n_ecom),
                                 pos_mcc_factor[foreign_mcc_choice] * rng.lognormal(0.2, 0.3, n_foreign)])
    term_lat = np.concatenate([pos_lat, atm_lat, e_lat, f_lat])
    term_lon = np.concatenate([pos_lon, atm_lon, e_lon, f_lon])
    term_country = np.concatenate([_grid_country(pos_lat, pos_lon), _grid_country(atm_lat, atm_lon),
                                   e_country, city_country[foreign_city]]).astype(np.int16)
    term_merchant = np.concatenate([pos_merchant, atm_merchant, ecom_merchant, foreign_merchant])

    pos_terms = np.arange(n_pos)
    atm_terms = n_pos + np.arange(n_atm)
    ecom_terms = n_pos + n_atm + np.arange(n_ecom)
    foreign_terms = n_pos + n_atm + n_ecom + np.arange(n_foreign)

    # The radius follows the density so a customer has ~TARGET_NEARBY_TERMINALS shops in reach
    # whatever --terminals is (the reference design uses a fixed 5 with 10k terminals).
    radius = float(np.clip(np.sqrt(TARGET_NEARBY_TERMINALS * GRID * GRID / (np.pi * n_pos)), 5, 30))
    atm_radius = float(np.clip(np.sqrt(3 * GRID * GRID / (np.pi * n_atm)), 5, 40))
    pos_near = pos_terms[_nearby(rng, cust_xy, pos_xy, radius, POS_SLOTS)]
    atm_near = atm_terms[_nearby(rng, cust_xy, atm_xy, atm_radius, ATM_SLOTS)]
    pos_neighbours = pos_terms[_nearby(rng, pos_xy, pos_xy, radius, 8)]

    ecom_popularity = 1.0 / np.arange(1, n_ecom + 1) ** 0.8
    ecom_popularity = rng.permutation(ecom_popularity / ecom_popularity.sum())
    ecom_favourite = ecom_terms[_pick_weighted(rng, ecom_popularity, c * ECOM_FAVOURITES)
                                .reshape(c, ECOM_FAVOURITES)]

    return _World(
        cust_xy=cust_xy, cust_lat=cust_lat, cust_lon=cust_lon,
        cust_country=_grid_country(cust_lat, cust_lon), cust_mean=cust_mean, cust_std=cust_mean / 2,
        cust_rate=rng.uniform(1.0, 4.0, c), cust_ecom=rng.beta(2, 5, c),
        cust_devices=1 + (rng.random(c) < 0.5).astype(np.int64),
        card_first=card_first, card_count=card_count,
        card_customer=np.repeat(np.arange(c), card_count),
        term_channel=term_channel, term_mcc=term_mcc, term_merchant=term_merchant,
        term_country=term_country, term_lat=term_lat, term_lon=term_lon, term_price=term_price,
        pos_terms=pos_terms, atm_terms=atm_terms, ecom_terms=ecom_terms, foreign_terms=foreign_terms,
        foreign_city=foreign_city, ecom_popularity=ecom_popularity,
        pos_near=pos_near, atm_near=atm_near, ecom_favourite=ecom_favourite, pos_neighbours=pos_neighbours,
    )


# ==========================================================================================
# transactions
# ==========================================================================================
_FRAME_FIELDS = ("cust", "card", "term", "t", "amount", "channel", "device", "ip", "lat", "lon",
                 "country", "scenario", "case")


class _Ids:
    """Allocates device and ip indices: customers own [0, 2C), everything else is handed out
    from a running counter (fraudsters, one-off devices), so all ids share one space."""

    def __init__(self, customers: int):
        self.next = 2 * customers

    def fresh(self, n: int) -> np.ndarray:
        out = np.arange(self.next, self.next + n, dtype=np.int64)
        self.next += n
        return out


def _legit(rng: np.random.Generator, w: _World, start_ms: int, end_ms: int,
           devices: _Ids, ips: _Ids) -> dict[str, np.ndarray]:
    custs, days = [], []
    for day in range(start_ms // DAY_MS, (end_ms - 1) // DAY_MS + 1):
        per_customer = rng.poisson(w.cust_rate * WEEKLY[(day + 3) % 7])  # 1970-01-01 was a Thursday
        custs.append(np.repeat(np.arange(w.customers), per_customer))
        days.append(np.full(len(custs[-1]), day, dtype=np.int64))
    cust = np.concatenate(custs)
    t = np.concatenate(days) * DAY_MS + _time_of_day(rng, len(cust))
    inside = (t >= start_ms) & (t < end_ms)
    cust, t = cust[inside], t[inside]
    n = len(cust)

    card = w.card_first[cust] + ((w.card_count[cust] == 2) & (rng.random(n) < 0.25))
    u = rng.random(n)
    channel = np.where(u < w.cust_ecom[cust], ECOM, np.where(u < w.cust_ecom[cust] + 0.05, ATM, POS)).astype(np.int8)
    term = w.pos_near[cust, _zipf_slots(rng, n, POS_SLOTS)]
    is_atm = channel == ATM
    term[is_atm] = w.atm_near[cust[is_atm], _pick_weighted(rng, [0.6, 0.3, 0.1], int(is_atm.sum()))]
    is_ecom = channel == ECOM
    ne = int(is_ecom.sum())
    favourite = w.ecom_favourite[cust[is_ecom], _zipf_slots(rng, ne, ECOM_FAVOURITES, 1.0)]
    anywhere = w.ecom_terms[_pick_weighted(rng, w.ecom_popularity, ne)]
    term[is_ecom] = np.where(rng.random(ne) < 0.85, favourite, anywhere)

    lat = w.term_lat[term].copy()
    lon = w.term_lon[term].copy()
    country = w.term_country[term].copy()
    # Online, the location is the buyer's ip: home, give or take the geolocation error.
    ce = cust[is_ecom]
    lat[is_ecom] = w.cust_lat[ce] + rng.normal(0, 0.03, ne)
    lon[is_ecom] = w.cust_lon[ce] + rng.normal(0, 0.03, ne)
    country[is_ecom] = w.cust_country[ce]
    device = np.full(n, -1, dtype=np.int64)
    ip = np.full(n, -1, dtype=np.int64)
    device[is_ecom] = 2 * ce + ((w.cust_devices[ce] == 2) & (rng.random(ne) < 0.3))
    ip[is_ecom] = 2 * ce + (rng.random(ne) < 0.2)  # home line or mobile network
    # A borrowed laptop, a new phone: unknown devices are not only fraudsters'.
    one_off = np.flatnonzero(is_ecom)[rng.random(ne) < 0.03]
    device[one_off] = devices.fresh(len(one_off))
    ip[one_off] = ips.fresh(len(one_off))

    _shopping_trips(rng, w, cust, card, t, channel, term, lat, lon, country, ip)

    _apply_trips(rng, w, start_ms, end_ms, cust, t, channel, term, lat, lon, country, ip, ips)

    base = rng.normal(w.cust_mean[cust], w.cust_std[cust])
    low = base < 0.5
    base[low] = rng.uniform(0.5, np.maximum(w.cust_mean[cust[low]], 1.0))
    amount = base * w.term_price[term]
    big = rng.random(n) < 0.004  # the yearly TV or flight: large amounts are not all fraud
    amount[big] *= rng.uniform(4, 12, int(big.sum()))
    # Zero-amount checks when a card is stored at a web shop: card testers are not the only ones.
    amount[is_ecom & (rng.random(n) < 0.004)] = 0.0
    is_atm = channel == ATM
    cash = w.cust_mean[cust[is_atm]] * rng.lognormal(0.8, 0.5, int(is_atm.sum()))
    amount[is_atm] = np.clip(np.round(cash / 10) * 10, 20, 1000)

    return dict(cust=cust, card=card, term=term, t=t, amount=amount, channel=channel, device=device, ip=ip,
                lat=lat, lon=lon, country=country, scenario=np.zeros(n, np.int8), case=np.full(n, -1, np.int64))


def _shopping_trips(rng, w: _World, cust, card, t, channel, term, lat, lon, country, ip) -> None:
    """Payments of a card less than an hour apart belong to one outing: a second shop is next to
    the first, an online purchase on the go geolocates there (mobile ip), and there is time to
    get from one place to the next. Without this, independent draws make legit cards teleport."""
    order = np.argsort(card.astype(np.int64) * (DAY_MS * 100_000) + (t - t.min()), kind="stable")
    c, ts, ch, tm = card[order], t[order], channel[order], term[order]
    outing = (c[1:] == c[:-1]) & (ts[1:] - ts[:-1] < HOUR_MS)
    after_shop = outing & (ch[:-1] != ECOM)
    moved = np.flatnonzero(after_shop & (ch[1:] == POS) & (tm[:-1] < len(w.pos_terms))) + 1
    shop = w.pos_neighbours[tm[moved - 1], rng.integers(0, 3, len(moved))]
    rows = order[moved]
    term[rows], lat[rows], lon[rows], country[rows] = shop, w.term_lat[shop], w.term_lon[shop], w.term_country[shop]
    on_the_go = order[np.flatnonzero(after_shop & (ch[1:] == ECOM)) + 1]
    before = order[np.flatnonzero(after_shop & (ch[1:] == ECOM))]
    lat[on_the_go] = lat[before] + rng.normal(0, 0.02, len(on_the_go))
    lon[on_the_go] = lon[before] + rng.normal(0, 0.02, len(on_the_go))
    country[on_the_go] = country[before]
    own = on_the_go[ip[on_the_go] < 2 * w.customers]
    ip[own] = 2 * cust[own] + 1
    walk = np.flatnonzero(outing & (ch[1:] != ECOM))
    rows, before = order[walk + 1], order[walk]
    # ~50 km/h door to door, plus a couple of minutes at the till.
    need = (_km(lat[before], lon[before], lat[rows], lon[rows]) / 50 * HOUR_MS).astype(np.int64) + 2 * MINUTE_MS
    t[rows] = np.maximum(t[rows], t[before] + need)


def _apply_trips(rng, w: _World, start_ms, end_ms, cust, t, channel, term, lat, lon, country, ip, ips) -> None:
    """Cardholders travel (one trip per ~200 days, 1.5-6 days long, 30% abroad): in-person
    payments move to terminals at the destination and online ones to a hotel's ip there."""
    days = (end_ms - start_ms) / DAY_MS
    n_trips = rng.poisson(w.customers * days / 200)
    if n_trips == 0 or len(t) == 0:
        return
    trip_cust = rng.integers(0, w.customers, n_trips)
    trip_start = rng.integers(start_ms - 3 * DAY_MS, end_ms, n_trips)
    trip_end = trip_start + rng.uniform(1.5, 6, n_trips) * DAY_MS
    abroad = rng.random(n_trips) < 0.3
    anchor = w.pos_terms[rng.integers(0, len(w.pos_terms), n_trips)]
    city = _pick_weighted(rng, [t_ for *_, t_, _ in FOREIGN_CITIES], n_trips)
    dest_lat = np.where(abroad, np.array([c[1] for c in FOREIGN_CITIES])[city], w.term_lat[anchor])
    dest_lon = np.where(abroad, np.array([c[2] for c in FOREIGN_CITIES])[city], w.term_lon[anchor])
    dest_country = np.where(abroad, np.array([_COUNTRY_INDEX[c[0]] for c in FOREIGN_CITIES])[city],
                            w.term_country[anchor])

    origin = start_ms - 10 * DAY_MS
    stride = end_ms - origin + DAY_MS
    trip_key = trip_cust.astype(np.int64) * stride + (trip_start - origin)
    order = np.argsort(trip_key, kind="stable")
    trip_key, trip_cust, trip_end = trip_key[order], trip_cust[order], trip_end[order]
    abroad, anchor, city = abroad[order], anchor[order], city[order]
    dest_lat, dest_lon, dest_country = dest_lat[order], dest_lon[order], dest_country[order]
    tx_key = cust.astype(np.int64) * stride + (t - origin)
    k = np.searchsorted(trip_key, tx_key, side="right") - 1
    ok = k >= 0
    kk = np.where(ok, k, 0)
    away = np.flatnonzero(ok & (trip_cust[kk] == cust) & (t < trip_end[kk]))
    if len(away) == 0:
        return
    trip = kk[away]
    physical = away[channel[away] != ECOM]
    p_trip = trip[channel[away] != ECOM]
    local = w.pos_neighbours[np.searchsorted(w.pos_terms, anchor[p_trip]), rng.integers(0, 8, len(p_trip))]
    city_terms = np.argsort(w.foreign_city, kind="stable")
    city_first = np.searchsorted(w.foreign_city[city_terms], np.arange(len(FOREIGN_CITIES)))
    city_count = np.bincount(w.foreign_city, minlength=len(FOREIGN_CITIES))
    pc = city[p_trip]
    foreign = w.foreign_terms[city_terms[city_first[pc] + (rng.random(len(p_trip)) * city_count[pc]).astype(np.int64)]]
    new_term = np.where(abroad[p_trip], foreign, local)
    term[physical] = new_term
    channel[physical] = w.term_channel[new_term]
    lat[physical] = w.term_lat[new_term]
    lon[physical] = w.term_lon[new_term]
    country[physical] = w.term_country[new_term]
    online = away[channel[away] == ECOM]
    o_trip = trip[channel[away] == ECOM]
    lat[online] = dest_lat[o_trip] + rng.normal(0, 0.03, len(online))
    lon[online] = dest_lon[o_trip] + rng.normal(0, 0.03, len(online))
    country[online] = dest_country[o_trip]
    ip[online] = ips.fresh(len(online))


@dataclass
class _Fraudsters:
    device: np.ndarray
    ip: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    country: np.ndarray

    def pick(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.integers(0, len(self.device), n)


def _fraudsters(rng, w: _World, n: int, devices: _Ids, ips: _Ids) -> _Fraudsters:
    abroad = rng.random(n) < 0.4
    city = _pick_weighted(rng, [f for *_, f in FOREIGN_CITIES], n)
    xy = rng.uniform(0, GRID, (n, 2))
    glat, glon = _grid_to_latlon(xy)
    lat = np.where(abroad, np.array([c[1] for c in FOREIGN_CITIES])[city] + rng.normal(0, 0.05, n), glat)
    lon = np.where(abroad, np.array([c[2] for c in FOREIGN_CITIES])[city] + rng.normal(0, 0.05, n), glon)
    country = np.where(abroad, np.array([_COUNTRY_INDEX[c[0]] for c in FOREIGN_CITIES])[city],
                       _grid_country(glat, glon)).astype(np.int16)
    return _Fraudsters(devices.fresh(n), ips.fresh(n), lat, lon, country)


def _ecom_terminals(rng, w: _World, preferred: tuple[str, ...], n: int) -> np.ndarray:
    prefer = np.isin(w.term_mcc[w.ecom_terms], [_MCC_INDEX[m] for m in preferred])
    pool = w.ecom_terms[prefer] if prefer.any() else w.ecom_terms
    return np.where(rng.random(n) < 0.75, pool[rng.integers(0, len(pool), n)],
                    w.ecom_terms[rng.integers(0, len(w.ecom_terms), n)])


def _online_fraud(rng, w: _World, gang: _Fraudsters, scenario: int, case: np.ndarray, card: np.ndarray,
                  t: np.ndarray, amount: np.ndarray, term: np.ndarray, who: np.ndarray) -> dict[str, np.ndarray]:
    n = len(t)
    return dict(cust=w.card_customer[card], card=card, term=term, t=t, amount=np.round(amount, 2),
                channel=np.full(n, ECOM, np.int8), device=gang.device[who], ip=gang.ip[who],
                lat=gang.lat[who] + rng.normal(0, 0.02, n), lon=gang.lon[who] + rng.normal(0, 0.02, n),
                country=gang.country[who], scenario=np.full(n, scenario, np.int8), case=case)


def _card_testing(rng, w, gang, events, start_ms, end_ms, case0) -> dict[str, np.ndarray]:
    card = rng.integers(0, w.cards, events)
    t0 = rng.integers(start_ms, max(start_ms + 1, end_ms - 3 * HOUR_MS), events)
    who = gang.pick(rng, events)
    tests = 3 + np.minimum(rng.poisson(5, events), 12)
    cash_out = rng.random(events) < 0.6
    per_event = tests + cash_out
    ev = np.repeat(np.arange(events), per_event)
    step = np.arange(len(ev)) - np.repeat(np.cumsum(per_event) - per_event, per_event)
    is_cash_out = step == tests[ev]  # the last one of an event that cashes out
    gap = rng.exponential(45_000, len(ev))
    gap[is_cash_out] = rng.uniform(5, 120, int(is_cash_out.sum())) * MINUTE_MS
    gap[step == 0] = 0
    t = t0[ev] + _cumsum_within(gap, per_event).astype(np.int64)
    # One or two test merchants per event, then a shop whose goods resell.
    test_shops = _ecom_terminals(rng, w, CARD_TESTING_MCCS, 2 * events).reshape(events, 2)
    term = test_shops[ev, (rng.random(len(ev)) < 0.3).astype(np.int64)]
    term[is_cash_out] = _ecom_terminals(rng, w, CASH_OUT_MCCS, int(is_cash_out.sum()))
    amount = np.where(rng.random(len(ev)) < 0.25, 0.0, rng.uniform(0.1, 3.0, len(ev)))
    amount[is_cash_out] = rng.lognormal(np.log(400), 0.6, int(is_cash_out.sum()))
    return _online_fraud(rng, w, gang, CARD_TESTING, case0 + ev, card[ev], t, amount, term, who[ev])


def _cumsum_within(values: np.ndarray, group_sizes: np.ndarray) -> np.ndarray:
    total = np.cumsum(values)
    before = np.repeat(total[np.cumsum(group_sizes) - group_sizes] - values[np.cumsum(group_sizes) - group_sizes],
                       group_sizes)
    return total - before


def _account_takeover(rng, w, gang, events, start_ms, end_ms, case0) -> dict[str, np.ndarray]:
    card = rng.integers(0, w.cards, events)
    span = end_ms - start_ms
    duration = np.minimum(rng.uniform(1, 4, events) * DAY_MS, span)
    t0 = start_ms + (rng.random(events) * (span - duration)).astype(np.int64)
    who = gang.pick(rng, events)
    per_event = 2 + rng.poisson(3, events)
    ev = np.repeat(np.arange(events), per_event)
    t = t0[ev] + (rng.random(len(ev)) * duration[ev]).astype(np.int64)
    amount = w.cust_mean[w.card_customer[card[ev]]] * rng.uniform(3, 10, len(ev))
    term = _ecom_terminals(rng, w, CASH_OUT_MCCS, len(ev))
    return _online_fraud(rng, w, gang, ACCOUNT_TAKEOVER, case0 + ev, card[ev], t, amount, term, who[ev])


def _high_amount(rng, w, gang, events, start_ms, end_ms, case0) -> dict[str, np.ndarray]:
    card = rng.integers(0, w.cards, events)
    cust = w.card_customer[card]
    t = rng.integers(start_ms, end_ms, events)
    amount = np.round(np.maximum(w.cust_mean[cust] * rng.uniform(5, 15, events), rng.uniform(150, 600, events)), 2)
    who = gang.pick(rng, events)
    frame = _online_fraud(rng, w, gang, HIGH_AMOUNT, case0 + np.arange(events), card, t, amount,
                          _ecom_terminals(rng, w, CASH_OUT_MCCS, events), who)
    # Half are a lost or stolen card used in a shop near the owner's home.
    in_shop = rng.random(events) < 0.5
    shop = w.pos_near[cust[in_shop], rng.integers(0, POS_SLOTS, int(in_shop.sum()))]
    frame["term"][in_shop] = shop
    frame["channel"][in_shop] = POS
    frame["device"][in_shop] = -1
    frame["ip"][in_shop] = -1
    frame["lat"][in_shop] = w.term_lat[shop]
    frame["lon"][in_shop] = w.term_lon[shop]
    frame["country"][in_shop] = w.term_country[shop]
    return frame


def _geo_impossible(rng, w, legit, events, start_ms, end_ms, case0) -> dict[str, np.ndarray]:
    """A cloned card is used far away minutes after the genuine card paid at home."""
    anchor = rng.integers(0, len(legit["t"]), events)
    per_event = 1 + np.minimum(rng.poisson(0.8, events), 4)
    ev = np.repeat(np.arange(events), per_event)
    first = np.repeat(np.cumsum(per_event) - per_event, per_event)
    gap = np.where(np.arange(len(ev)) == first, rng.uniform(2, 45, len(ev)), rng.uniform(1, 20, len(ev)))
    t = legit["t"][anchor][ev] + (_cumsum_within(gap, per_event) * MINUTE_MS).astype(np.int64)
    # Abroad, or the far side of the grid: the farthest of a few random terminals.
    abroad = rng.random(events) < 0.6
    foreign = w.foreign_terms[_pick_weighted(
        rng, np.array([f for *_, f in FOREIGN_CITIES])[w.foreign_city], events)]
    domestic_pool = np.concatenate([w.pos_terms, w.atm_terms])
    options = domestic_pool[rng.integers(0, len(domestic_pool), (events, 6))]
    far = _km(legit["lat"][anchor][:, None], legit["lon"][anchor][:, None], w.term_lat[options], w.term_lon[options])
    domestic = options[np.arange(events), np.argmax(far, axis=1)]
    place = np.where(abroad, foreign, domestic)
    # Cloned cards hop between shops of the same area (POS terminals are numbered first).
    at_shop = place < len(w.pos_terms)
    hop = w.pos_neighbours[np.minimum(place, len(w.pos_terms) - 1)[ev], rng.integers(0, 8, len(ev))]
    term = np.where((np.arange(len(ev)) != first) & ~abroad[ev] & at_shop[ev], hop, place[ev])
    card = legit["card"][anchor][ev]
    cust = w.card_customer[card]
    channel = w.term_channel[term]
    amount = np.round(w.cust_mean[cust] * rng.uniform(1.5, 5, len(ev)), 2)
    atm = channel == ATM
    amount[atm] = np.round(rng.uniform(100, 500, int(atm.sum())) / 10) * 10
    n = len(ev)
    return dict(cust=cust, card=card, term=term, t=t, amount=amount, channel=channel.astype(np.int8),
                device=np.full(n, -1, np.int64), ip=np.full(n, -1, np.int64),
                lat=w.term_lat[term].copy(), lon=w.term_lon[term].copy(), country=w.term_country[term].copy(),
                scenario=np.full(n, GEO_IMPOSSIBLE, np.int8), case=case0 + ev)


def _compromise_terminals(rng, w: _World, legit, budget: float, start_ms, end_ms, case0) -> None:
    """Mark a share of the payments at a few POS terminals as fraud, terminal by terminal,
    until the budget is spent (at least one terminal that saw payments)."""
    days = (end_ms - start_ms) / DAY_MS
    # 1-4 weeks in a long span; a short span would otherwise be all compromised window.
    scale = min(1.0, days / 84)
    window = np.maximum(rng.uniform(7, 28, len(w.pos_terms)) * scale * DAY_MS, min(DAY_MS, end_ms - start_ms))
    begin = start_ms + (rng.random(len(w.pos_terms)) * np.maximum(end_ms - start_ms - window, 0)).astype(np.int64)
    share = rng.uniform(0.3, 0.6, len(w.pos_terms))
    candidates = rng.permutation(len(w.pos_terms))
    by_terminal = np.lexsort((legit["t"], legit["term"]))
    term_sorted, t_sorted = legit["term"][by_terminal], legit["t"][by_terminal]
    keys = w.pos_terms[candidates]
    lo = _searchsorted_pairs(term_sorted, t_sorted, keys, begin[candidates])
    hi = _searchsorted_pairs(term_sorted, t_sorted, keys, (begin + window).astype(np.int64)[candidates])
    expected = (hi - lo) * share[candidates]
    take = int(np.searchsorted(np.cumsum(expected), budget)) + 1
    take = max(take, int(np.argmax(hi - lo > 0)) + 1)
    lo, hi, share = lo[:take], hi[:take], share[candidates][:take]
    # With few, busy terminals one of them can hold the whole budget: skim the last one less.
    left = budget - (np.cumsum(expected)[take - 2] if take > 1 else 0.0)
    share[-1] = np.clip(left / max(hi[-1] - lo[-1], 1), 0.02, share[-1])
    rows = _ragged_arange(lo, hi - lo)
    hit = rng.random(len(rows)) < np.repeat(share, hi - lo)
    victims = by_terminal[rows[hit]]
    legit["scenario"][victims] = COMPROMISED_TERMINAL
    legit["case"][victims] = case0 + np.arange(len(victims))  # each cardholder disputes their own payment


def _searchsorted_pairs(term_sorted, t_sorted, keys, times) -> np.ndarray:
    """Position of each (terminal, time) in arrays sorted by (terminal, time)."""
    origin = min(int(t_sorted.min()), int(times.min())) if len(t_sorted) else 0
    stride = max(int(t_sorted.max()), int(times.max())) - origin + 1 if len(t_sorted) else 1
    composite = term_sorted.astype(np.int64) * stride + (t_sorted - origin)
    return np.searchsorted(composite, keys.astype(np.int64) * stride + (times - origin))


def _transactions(rng, w: _World, start_ms, end_ms, fraud_rate: float, progress) -> dict[str, np.ndarray]:
    devices, ips = _Ids(w.customers), _Ids(w.customers)
    legit = _legit(rng, w, start_ms, end_ms, devices, ips)
    progress(f"{len(legit['t']):,} legit transactions")
    n_legit = len(legit["t"])
    if fraud_rate <= 0 or n_legit == 0:
        return legit
    budget = fraud_rate * n_legit / (1 - fraud_rate) * SCENARIO_SHARE
    mean_size = np.array([8.6, 1.0, 5.0, 1.0, 1.8])  # payments per case, from the generators below
    events = np.maximum(1, np.round(budget / mean_size)).astype(np.int64)
    gang = _fraudsters(rng, w, max(4, int(events.sum()) // 4), devices, ips)
    case = 0
    _compromise_terminals(rng, w, legit, budget[1], start_ms, end_ms, case)
    case += n_legit
    frames = [legit]
    for make, k in ((_card_testing, 0), (_account_takeover, 2), (_high_amount, 3)):
        frames.append(make(rng, w, gang, int(events[k]), start_ms, end_ms, case))
        case += int(events[k])
    frames.append(_geo_impossible(rng, w, legit, int(events[4]), start_ms, end_ms, case))
    tx = {f: np.concatenate([fr[f] for fr in frames]) for f in _FRAME_FIELDS}
    inside = tx["t"] < end_ms  # a burst that starts near the end may run past it
    return tx if inside.all() else {f: v[inside] for f, v in tx.items()}


# ==========================================================================================
# labels
# ==========================================================================================
def _transaction_labels(rng, w: _World, tx, ids: np.ndarray, card_ids: np.ndarray, end_ms: int) -> dict:
    fraud = np.flatnonzero(tx["scenario"] > 0)
    case_ids, case_of = np.unique(tx["case"][fraud], return_inverse=True)
    case_end = np.full(len(case_ids), np.iinfo(np.int64).min)
    np.maximum.at(case_end, case_of, tx["t"][fraud])
    by_analyst = rng.random(len(case_ids)) < 0.35
    delay = np.where(by_analyst, rng.uniform(0.5, 48, len(case_ids)) * HOUR_MS,
                     (2 + 28 * rng.beta(1.3, 2.5, len(case_ids))) * DAY_MS).astype(np.int64)
    fraud_time = case_end[case_of] + delay[case_of]
    fraud_analyst = by_analyst[case_of]

    legit = np.flatnonzero(tx["scenario"] == 0)
    cust = tx["cust"][legit]
    suspicious = ((tx["amount"][legit] > 3 * w.cust_mean[cust]) | (tx["country"][legit] != w.cust_country[cust])
                  | ((tx["device"][legit] >= 0) & (tx["device"][legit] // 2 != cust)))
    reviewed = legit[rng.random(len(legit)) < np.where(suspicious, 0.10, 0.002)]
    review_time = tx["t"][reviewed] + (rng.uniform(1, 48, len(reviewed)) * HOUR_MS).astype(np.int64)

    rows = np.concatenate([fraud, reviewed])
    label_time = np.concatenate([fraud_time, review_time])
    kind = np.concatenate([np.where(fraud_analyst, 1, 0), np.full(len(reviewed), 2)])  # chargeback, analyst_fraud, analyst_legit
    known = label_time < end_ms
    rows, label_time, kind = rows[known], label_time[known], kind[known]
    n = len(rows)
    return dict(
        event_id=ids[rows], stream=np.full(n, "transactions", dtype=object),
        label=np.array(["chargeback", "analyst_fraud", "analyst_legit"], dtype=object)[kind],
        is_positive=(kind < 2).astype(np.int8), label_time=label_time,
        entity_id=card_ids[tx["card"][rows]],
        source=np.array(["chargeback", "analyst", "analyst"], dtype=object)[kind],
    )


# ==========================================================================================
# credit
# ==========================================================================================
def _loans(rng, w: _World, start_ms, end_ms, seed: int, customer_ids: np.ndarray) -> tuple[dict, dict]:
    days = (end_ms - start_ms) / DAY_MS
    n = int(rng.poisson(w.customers * days / 120))  # a customer applies about every four months
    day = rng.integers(start_ms // DAY_MS, (end_ms - 1) // DAY_MS + 1, n)
    t = np.clip(day * DAY_MS + _time_of_day(rng, n), start_ms, end_ms - 1)
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
def _market(rng, start_ms, end_ms) -> tuple[dict, list[tuple[np.ndarray, np.ndarray]]]:
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


def _positions(rng, series, customers: int, days: float) -> dict:
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
        return _empty(POSITION_COLUMNS)
    t = np.concatenate(times)
    order = np.argsort(t, kind="stable")
    pairs = np.concatenate(names)[order]
    return dict(portfolio_id=np.array([s.split("|")[0] for s in pairs], dtype=object),
                instrument=np.array([s.split("|")[1] for s in pairs], dtype=object),
                event_time=t[order], quantity=np.concatenate(quantities)[order],
                price=np.concatenate(prices)[order])


def _empty(columns: dict[str, str]) -> dict[str, np.ndarray]:
    return {name: np.empty(0, dtype=object if kind == "str" else kind) for name, kind in columns.items()}


# ==========================================================================================
# public API
# ==========================================================================================
def simulate(days: int = 7, customers: int = 2000, terminals: int = 500, seed: int = 7,
             start_ms: int | None = None, fraud_rate: float | None = None,
             with_market: bool = True, with_credit: bool = True,
             progress: Callable[[str], None] | None = None) -> Simulation:
    """Generate every input stream for ``days`` days from ``start_ms`` (default 2024-01-01 UTC).

    About 2.5 transactions per customer per day. ``fraud_rate`` (default 0.7%) is the target
    share of fraudulent transactions; at small sizes every scenario still gets at least one
    case, so the realised rate can be higher. Identical arguments give identical output; the
    transactions do not depend on ``with_market``/``with_credit``.
    """
    if days < 1:
        raise ValueError("days must be at least 1")
    if customers < 1:
        raise ValueError("customers must be at least 1")
    if terminals < 30:
        raise ValueError("terminals must be at least 30 (shops, ATMs, web shops and terminals abroad)")
    fraud_rate = DEFAULT_FRAUD_RATE if fraud_rate is None else float(fraud_rate)
    if not 0 <= fraud_rate <= 0.5:
        raise ValueError("fraud_rate must be between 0 and 0.5")
    start_ms = DEFAULT_START_MS if start_ms is None else int(start_ms)
    end_ms = start_ms + days * DAY_MS
    say = progress or (lambda message: None)
    # Independent streams per part, so switching market or credit off leaves the cards alone.
    rng_world, rng_tx, rng_labels, rng_market, rng_credit = np.random.default_rng(seed).spawn(5)

    w = _build_world(rng_world, customers, terminals)
    say(f"world: {w.customers:,} customers, {w.cards:,} cards, {terminals:,} terminals")
    tx = _transactions(rng_tx, w, start_ms, end_ms, fraud_rate, say)
    order = np.argsort(tx["t"], kind="stable")
    tx = {f: v[order] for f, v in tx.items()}
    n = len(tx["t"])
    say(f"{n:,} transactions, {int((tx['scenario'] > 0).sum()):,} fraudulent; building columns")

    salt = int(np.random.default_rng(seed).integers(0, 2**62))
    transaction_ids = np.array([f"tx-{seed}-{i:09d}" for i in range(n)], dtype=object)
    card_ids = _format_codes(_scramble64(np.arange(w.cards), salt), lambda v: f"card_{v:016x}")
    customer_ids = np.array([f"C{i:07d}" for i in range(customers)], dtype=object)
    terminal_ids = np.array([f"T{i:06d}" for i in range(terminals)], dtype=object)
    merchant_ids = np.array([f"M{i:06d}" for i in range(int(w.term_merchant.max()) + 1)], dtype=object)
    device_code = np.where(tx["device"] >= 0, _scramble64(np.maximum(tx["device"], 0), salt + 1).astype(np.int64) & ((1 << 62) - 1), -1)
    ip_code = np.where(tx["ip"] >= 0, _scramble32(np.maximum(tx["ip"], 0), salt).astype(np.int64), -1)
    term = tx["term"]
    transactions = {
        "transaction_id": transaction_ids,
        "event_time": tx["t"].astype(np.int64),
        "card_id": card_ids[tx["card"]],
        "customer_id": customer_ids[tx["cust"]],
        "terminal_id": terminal_ids[term],
        "merchant_id": merchant_ids[w.term_merchant[term]],
        "amount": np.round(tx["amount"], 2).astype(np.float64),
        "currency": np.array([CURRENCY[c] for c in COUNTRIES], dtype=object)[w.term_country[term]],
        "country": np.array(COUNTRIES, dtype=object)[tx["country"]],
        "channel": np.array(CHANNELS, dtype=object)[tx["channel"]],
        "mcc": np.array(MCCS, dtype=object)[w.term_mcc[term]],
        "device_id": _format_codes(device_code, lambda v: f"dev_{v:015x}"),
        "ip": _format_codes(ip_code, lambda v: f"{v >> 24}.{(v >> 16) & 255}.{(v >> 8) & 255}.{v & 255}"),
        "lat": np.round(tx["lat"], 5),
        "lon": np.round(tx["lon"], 5),
        "is_fraud": (tx["scenario"] > 0).astype(np.int8),
        "fraud_scenario": np.array(SCENARIO_NAMES, dtype=object)[tx["scenario"]],
    }
    labels = _transaction_labels(rng_labels, w, tx, transaction_ids, card_ids, end_ms)

    loans = _empty(LOAN_COLUMNS)
    if with_credit:
        loans, loan_labels = _loans(rng_credit, w, start_ms, end_ms, seed, customer_ids)
        labels = {k: np.concatenate([labels[k], loan_labels[k]]) for k in LABEL_COLUMNS}
        say(f"{len(loans['event_time']):,} loan applications")
    order = np.argsort(labels["label_time"], kind="stable")
    labels = {k: v[order] for k, v in labels.items()}

    market, positions = _empty(MARKET_COLUMNS), _empty(POSITION_COLUMNS)
    if with_market:
        market, series = _market(rng_market, start_ms, end_ms)
        positions = _positions(rng_market, series, customers, days)
        say(f"{len(market['event_time']):,} market ticks, {len(positions['event_time']):,} position updates")
    return Simulation(transactions=transactions, labels=labels, market=market, positions=positions,
                      loan_applications=loans, start_ms=start_ms, end_ms=end_ms)


# ==========================================================================================
# files
# ==========================================================================================
SUFFIXES = (".csv", ".parquet")


def stream_paths(out: str | Path) -> dict[str, Path]:
    """Where each stream goes: transactions at ``out``, the rest next to it as
    ``<stem>.<stream><suffix>``."""
    out = Path(out)
    if out.suffix not in SUFFIXES:
        raise ValueError(f"output must end in .csv or .parquet, got {out.name!r}")
    return {name: out if name == "transactions" else out.with_name(f"{out.stem}.{name}{out.suffix}")
            for name in STREAM_COLUMNS}


def _arrow_type(kind: str):
    import pyarrow as pa

    return {"str": pa.string(), "int64": pa.int64(), "int8": pa.int8(), "float64": pa.float64()}[kind]


def write_simulation(sim: Simulation, out: str | Path) -> list[Path]:
    """Write the streams as CSV or Parquet (by the suffix of ``out``); returns the paths written.
    Transactions and labels are always written, the other streams when they have rows."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    paths = stream_paths(out)
    written = []
    for name, columns in sim.streams().items():
        schema = STREAM_COLUMNS[name]
        if name not in ("transactions", "labels") and len(next(iter(columns.values()))) == 0:
            continue
        table = pa.table({col: pa.array(columns[col], type=_arrow_type(kind)) for col, kind in schema.items()})
        path = paths[name]
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".parquet":
            pq.write_table(table, path)
        else:
            pacsv.write_csv(table, path)
        written.append(path)
    return written


def read_stream(path: str | Path, stream: str) -> dict[str, np.ndarray]:
    """Read one stream written by :func:`write_simulation` back into numpy columns with the
    generator's dtypes (CSV needs the schema, or ``mcc`` would come back as a number)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    schema = STREAM_COLUMNS[stream]
    path = Path(path)
    if path.suffix == ".parquet":
        table = pq.read_table(path)
    else:
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
            column_types={col: _arrow_type(kind) for col, kind in schema.items()},
            strings_can_be_null=False, quoted_strings_can_be_null=False))
    out = {}
    for col, kind in schema.items():
        values = table.column(col).to_numpy(zero_copy_only=False)
        out[col] = values.astype(object) if kind == "str" else values.astype(kind)
    return out


def read_simulation(out: str | Path) -> Simulation:
    """The inverse of :func:`write_simulation`; streams without a file come back empty."""
    paths = stream_paths(out)
    streams = {name: read_stream(p, name) if p.exists() else _empty(STREAM_COLUMNS[name])
               for name, p in paths.items()}
    times = streams["transactions"]["event_time"]
    start = int(times.min()) if len(times) else DEFAULT_START_MS
    end = int(times.max()) + 1 if len(times) else DEFAULT_START_MS
    return Simulation(**streams, start_ms=start, end_ms=end)


# ==========================================================================================
# CLI
# ==========================================================================================
def summarize(sim: Simulation, written: list[Path] | None = None, seconds: float | None = None) -> str:
    tx, labels = sim.transactions, sim.labels
    n = len(tx["event_time"])
    n_fraud = int(tx["is_fraud"].sum())
    start = datetime.fromtimestamp(sim.start_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")
    days = (sim.end_ms - sim.start_ms) / DAY_MS
    took = f" in {seconds:.1f} s ({n / max(seconds, 1e-9):,.0f} transactions/s)" if seconds else ""
    lines = [f"simulated {days:g} days from {start} UTC{took}",
             f"  transactions       {n:>10,}  fraud {n_fraud:,} ({100 * n_fraud / max(n, 1):.2f}%)"]
    for scenario, count in sim.scenario_counts().items():
        lines.append(f"    {scenario:<22} {count:>8,}  ({100 * count / max(n, 1):.3f}%)")
    on_tx = labels["stream"] == "transactions"
    positive_tx = int((on_tx & (labels["is_positive"] == 1)).sum())
    lines.append(f"  labels             {len(labels['label_time']):>10,}  frauds labelled by the end of the span: "
                 f"{positive_tx:,} of {n_fraud:,}; analyst_legit {int((labels['label'] == 'analyst_legit').sum()):,}")
    if len(sim.market["event_time"]):
        lines.append(f"  market             {len(sim.market['event_time']):>10,}  "
                     f"ticks over {len(np.unique(sim.market['instrument'].astype(str)))} instruments")
        lines.append(f"  positions          {len(sim.positions['event_time']):>10,}")
    if len(sim.loan_applications["event_time"]):
        loan = labels["stream"] == "loan_applications"
        lines.append(f"  loan_applications  {len(sim.loan_applications['event_time']):>10,}  outcomes known: "
                     f"{int(loan.sum()):,} ({int((loan & (labels['is_positive'] == 1)).sum()):,} defaults)")
    if written:
        lines.append("wrote")
        lines.extend(f"  {p}" for p in written)
        lines.append(f"next: riskstream replay {written[0]} --stream transactions --label-column is_fraud "
                     f"--label-delay 7d --offline")
    return "\n".join(lines)


def _parse_start(value: str) -> int:
    from riskstream.schemas.events import InvalidEvent, parse_event_time

    try:
        return parse_event_time(int(value) if value.isdigit() else value)
    except InvalidEvent as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _run(args: argparse.Namespace) -> int:
    began = time.perf_counter()

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"simulate [{time.perf_counter() - began:5.1f}s] {message}", file=sys.stderr, flush=True)

    try:
        stream_paths(args.out)
        sim = simulate(days=args.days, customers=args.customers, terminals=args.terminals, seed=args.seed,
                       start_ms=args.start, fraud_rate=args.fraud_rate, with_market=not args.no_market,
                       with_credit=not args.no_credit, progress=progress)
    except ValueError as exc:
        print(f"riskstream simulate: {exc}", file=sys.stderr)
        return 2
    generated = time.perf_counter() - began
    progress(f"writing {Path(args.out).suffix[1:]} files")
    written = write_simulation(sim, args.out)
    progress("done")
    print(summarize(sim, written, generated))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="Generate seeded synthetic transactions with labelled fraud, labels, market, positions, loans",
        description="Generate realistic, seeded input streams. Transactions go to --out; labels, market, "
                    "positions and loan applications next to it as <stem>.<stream><suffix>.",
    )
    p.add_argument("--days", type=int, default=7, help="length of the simulated span (default 7)")
    p.add_argument("--customers", type=int, default=2000,
                   help="cardholders; ~2.5 transactions each per day (default 2000)")
    p.add_argument("--terminals", type=int, default=500, help="terminals, at least 30 (default 500)")
    p.add_argument("--out", required=True, help="transactions file, .csv or .parquet")
    p.add_argument("--seed", type=int, default=7, help="same seed and arguments, same output (default 7)")
    p.add_argument("--start", type=_parse_start, default=None,
                   help="start of the span, ISO-8601 or epoch ms (default 2024-01-01T00:00Z)")
    p.add_argument("--fraud-rate", type=float, default=None,
                   help=f"target share of fraudulent transactions (default {DEFAULT_FRAUD_RATE})")
    p.add_argument("--no-market", action="store_true", help="skip market ticks and positions")
    p.add_argument("--no-credit", action="store_true", help="skip loan applications and their outcomes")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=_run)
