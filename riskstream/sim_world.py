"""The simulator's world: its constants (scenarios, channels, columns, geography, merchants,
instruments) and the customers, cards and terminals it builds (``build_world``)."""

from __future__ import annotations
from dataclasses import dataclass
from typing import Callable
import numpy as np
from riskstream.schemas.events import DAY_MS, HOUR_MS


MINUTE_MS = 60_000


# A fixed default start keeps identical arguments giving identical output; 2024-01-01 was a Monday.
DEFAULT_START_MS = 1_704_067_200_000


DEFAULT_FRAUD_RATE = 0.007


CARD_TESTING, COMPROMISED_TERMINAL, ACCOUNT_TAKEOVER, HIGH_AMOUNT, GEO_IMPOSSIBLE = range(1, 6)
SCENARIOS = ("card_testing", "compromised_terminal", "account_takeover", "high_amount", "geo_impossible")


SCENARIO_NAMES = ("",) + SCENARIOS


SCENARIO_SHARE = np.array([0.20, 0.25, 0.25, 0.10, 0.20])


POS, ECOM, ATM = 0, 1, 2
CHANNELS = ("pos", "ecom", "atm")


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
# Grid y=0 is the northern edge; one unit is ~11 km either way at these latitudes.
LAT_TOP, LAT_STEP = 53.5, 0.10
LON_LEFT, LON_STEP = 1.0, 0.16
GRID = 100.0


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


COUNTRY_INDEX = {c: i for i, c in enumerate(COUNTRIES)}


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


MCC_INDEX = {m: i for i, m in enumerate(MCCS)}


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


# ==========================================================================================
# helpers
# ==========================================================================================
def grid_to_latlon(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return LAT_TOP - xy[:, 1] * LAT_STEP, LON_LEFT + xy[:, 0] * LON_STEP


def grid_country(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    centres = np.array([(la, lo) for _, la, lo in GRID_COUNTRIES])
    # Longitude degrees shrink with latitude; 0.67 ~ cos(48 deg) keeps the borders roughly right.
    d = (lat[:, None] - centres[None, :, 0]) ** 2 + ((lon[:, None] - centres[None, :, 1]) * 0.67) ** 2
    codes = np.array([COUNTRY_INDEX[c] for c, *_ in GRID_COUNTRIES], dtype=np.int16)
    return codes[np.argmin(d, axis=1)]


def distance_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance (haversine), km."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(np.radians(lon2 - lon1) / 2) ** 2
    return 12_742.0 * np.arcsin(np.sqrt(np.minimum(a, 1.0)))


def scramble64(index: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64 finaliser: a bijection, so distinct indices give distinct opaque ids and an id
    says nothing about whether it belongs to a customer or a fraudster."""
    z = index.astype(np.uint64) + np.uint64(salt & 0xFFFFFFFFFFFFFFFF) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def scramble32(index: np.ndarray, salt: int) -> np.ndarray:
    """murmur3 fmix32 (a bijection on 32 bits), for ip addresses."""
    h = (index.astype(np.uint64) + np.uint64(salt & 0xFFFFFFFF)) & np.uint64(0xFFFFFFFF)
    h = h.astype(np.uint32)
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


def format_codes(codes: np.ndarray, fmt: Callable[[int], str], missing: int = -1) -> np.ndarray:
    """Object array of strings, formatting each distinct code once."""
    uniq, inverse = np.unique(codes, return_inverse=True)
    strings = np.array([("" if u == missing else fmt(u)) for u in uniq.tolist()] or [""], dtype=object)
    return strings[inverse] if len(codes) else np.empty(0, dtype=object)


def ragged_arange(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + c) for each (s, c)."""
    counts = counts.astype(np.int64)
    total = int(counts.sum())
    offsets = np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(starts.astype(np.int64), counts) + (np.arange(total, dtype=np.int64) - offsets)


def zipf_slots(rng: np.random.Generator, n: int, slots: int, exponent: float = 0.9) -> np.ndarray:
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
        cand = order[ragged_arange(cell_start[ncell].ravel(), cnt)]
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


def time_of_day(rng: np.random.Generator, n: int) -> np.ndarray:
    """Milliseconds after midnight UTC: mostly business hours (CET shops), some at night."""
    business = rng.normal(13.5 * HOUR_MS, 3.5 * HOUR_MS, n)
    anytime = rng.uniform(0, DAY_MS, n)
    return np.mod(np.where(rng.random(n) < 0.9, business, anytime), DAY_MS).astype(np.int64)


def pick_weighted(rng: np.random.Generator, weights, n: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    return np.minimum(np.searchsorted(np.cumsum(w / w.sum()), rng.random(n)), len(w) - 1)


# ==========================================================================================
# the world: customers, cards, devices, merchants, terminals
# ==========================================================================================
@dataclass
class World:
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


def build_world(rng: np.random.Generator, customers: int, terminals: int) -> World:
    c = customers
    cust_xy = rng.uniform(0, GRID, (c, 2))
    cust_lat, cust_lon = grid_to_latlon(cust_xy)
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
    pos_mcc_choice = pick_weighted(rng, [w for _, w, _ in POS_MCCS], n_pos_merchants)[pos_merchant]
    merchant_factor = rng.lognormal(0, 0.25, n_pos_merchants)[pos_merchant]

    n_banks = max(1, n_atm // 8)
    atm_merchant = n_pos_merchants + rng.integers(0, n_banks, n_atm)
    atm_xy = rng.uniform(0, GRID, (n_atm, 2))

    ecom_merchant = n_pos_merchants + n_banks + np.arange(n_ecom) // 2  # web shops with 1-2 acquiring terminals
    ecom_mcc_choice = pick_weighted(rng, [w for _, w, _ in ECOM_MCCS], n_ecom)
    ecom_abroad = rng.random(n_ecom) < 0.2
    ecom_xy = rng.uniform(0, GRID, (n_ecom, 2))
    ecom_city = pick_weighted(rng, [t for *_, t, _ in FOREIGN_CITIES], n_ecom)

    # Every city gets at least one terminal so that travellers and fraudsters always find one.
    foreign_city = np.concatenate([np.arange(n_cities),
                                   pick_weighted(rng, [t for *_, t, _ in FOREIGN_CITIES], n_foreign - n_cities)])
    foreign_is_atm = rng.random(n_foreign) < 0.2
    foreign_mcc_choice = pick_weighted(rng, [w for _, w, _ in POS_MCCS], n_foreign)
    foreign_merchant = ecom_merchant[-1] + 1 + np.arange(n_foreign)
    city_lat = np.array([la for _, la, *_ in FOREIGN_CITIES])
    city_lon = np.array([lo for _, _, lo, *_ in FOREIGN_CITIES])
    city_country = np.array([COUNTRY_INDEX[cc] for cc, *_ in FOREIGN_CITIES], dtype=np.int16)

    pos_lat, pos_lon = grid_to_latlon(pos_xy)
    atm_lat, atm_lon = grid_to_latlon(atm_xy)
    e_lat, e_lon = grid_to_latlon(ecom_xy)
    e_lat = np.where(ecom_abroad, city_lat[ecom_city], e_lat)
    e_lon = np.where(ecom_abroad, city_lon[ecom_city], e_lon)
    e_country = np.where(ecom_abroad, city_country[ecom_city], grid_country(e_lat, e_lon))
    f_lat = city_lat[foreign_city] + rng.normal(0, 0.05, n_foreign)
    f_lon = city_lon[foreign_city] + rng.normal(0, 0.05, n_foreign)

    pos_mcc_idx = np.array([MCC_INDEX[m] for m, *_ in POS_MCCS])
    pos_mcc_factor = np.array([f for *_, f in POS_MCCS])
    ecom_mcc_idx = np.array([MCC_INDEX[m] for m, *_ in ECOM_MCCS])
    ecom_mcc_factor = np.array([f for *_, f in ECOM_MCCS])

    term_channel = np.concatenate([np.full(n_pos, POS), np.full(n_atm, ATM), np.full(n_ecom, ECOM),
                                   np.where(foreign_is_atm, ATM, POS)]).astype(np.int8)
    term_mcc = np.concatenate([pos_mcc_idx[pos_mcc_choice], np.full(n_atm, MCC_INDEX[ATM_MCC]),
                               ecom_mcc_idx[ecom_mcc_choice],
                               np.where(foreign_is_atm, MCC_INDEX[ATM_MCC], pos_mcc_idx[foreign_mcc_choice])])
    term_price = np.concatenate([pos_mcc_factor[pos_mcc_choice] * merchant_factor, np.ones(n_atm),
                                 ecom_mcc_factor[ecom_mcc_choice] * rng.lognormal(0, 0.25, n_ecom),
                                 pos_mcc_factor[foreign_mcc_choice] * rng.lognormal(0.2, 0.3, n_foreign)])
    term_lat = np.concatenate([pos_lat, atm_lat, e_lat, f_lat])
    term_lon = np.concatenate([pos_lon, atm_lon, e_lon, f_lon])
    term_country = np.concatenate([grid_country(pos_lat, pos_lon), grid_country(atm_lat, atm_lon),
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
    ecom_favourite = ecom_terms[pick_weighted(rng, ecom_popularity, c * ECOM_FAVOURITES)
                                .reshape(c, ECOM_FAVOURITES)]

    return World(
        cust_xy=cust_xy, cust_lat=cust_lat, cust_lon=cust_lon,
        cust_country=grid_country(cust_lat, cust_lon), cust_mean=cust_mean, cust_std=cust_mean / 2,
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
