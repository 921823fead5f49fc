"""Simulated card traffic: legit shopping, the fraud scenarios, and the chargebacks and analyst
verdicts that label them later (``card_transactions``, ``card_labels``)."""

from __future__ import annotations
from dataclasses import dataclass
import numpy as np
from riskstream.schemas.events import DAY_MS, HOUR_MS
from riskstream.sim_world import (
    ACCOUNT_TAKEOVER, ATM, CARD_TESTING, CARD_TESTING_MCCS, CASH_OUT_MCCS, COMPROMISED_TERMINAL,
    COUNTRY_INDEX, ECOM, ECOM_FAVOURITES, FOREIGN_CITIES, GEO_IMPOSSIBLE, GRID, HIGH_AMOUNT, MCC_INDEX,
    MINUTE_MS, POS, POS_SLOTS, SCENARIO_SHARE, WEEKLY, World, distance_km, grid_country, grid_to_latlon,
    pick_weighted, ragged_arange, time_of_day, zipf_slots,
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


def _legit(rng: np.random.Generator, w: World, start_ms: int, end_ms: int,
           devices: _Ids, ips: _Ids) -> dict[str, np.ndarray]:
    custs, days = [], []
    for day in range(start_ms // DAY_MS, (end_ms - 1) // DAY_MS + 1):
        per_customer = rng.poisson(w.cust_rate * WEEKLY[(day + 3) % 7])  # 1970-01-01 was a Thursday
        custs.append(np.repeat(np.arange(w.customers), per_customer))
        days.append(np.full(len(custs[-1]), day, dtype=np.int64))
    cust = np.concatenate(custs)
    t = np.concatenate(days) * DAY_MS + time_of_day(rng, len(cust))
    inside = (t >= start_ms) & (t < end_ms)
    cust, t = cust[inside], t[inside]
    n = len(cust)

    card = w.card_first[cust] + ((w.card_count[cust] == 2) & (rng.random(n) < 0.25))
    u = rng.random(n)
    channel = np.where(u < w.cust_ecom[cust], ECOM, np.where(u < w.cust_ecom[cust] + 0.05, ATM, POS)).astype(np.int8)
    term = w.pos_near[cust, zipf_slots(rng, n, POS_SLOTS)]
    is_atm = channel == ATM
    term[is_atm] = w.atm_near[cust[is_atm], pick_weighted(rng, [0.6, 0.3, 0.1], int(is_atm.sum()))]
    is_ecom = channel == ECOM
    ne = int(is_ecom.sum())
    favourite = w.ecom_favourite[cust[is_ecom], zipf_slots(rng, ne, ECOM_FAVOURITES, 1.0)]
    anywhere = w.ecom_terms[pick_weighted(rng, w.ecom_popularity, ne)]
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


def _shopping_trips(rng, w: World, cust, card, t, channel, term, lat, lon, country, ip) -> None:
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
    need = (distance_km(lat[before], lon[before], lat[rows], lon[rows]) / 50 * HOUR_MS).astype(np.int64) + 2 * MINUTE_MS
    t[rows] = np.maximum(t[rows], t[before] + need)


def _apply_trips(rng, w: World, start_ms, end_ms, cust, t, channel, term, lat, lon, country, ip, ips) -> None:
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
    city = pick_weighted(rng, [t_ for *_, t_, _ in FOREIGN_CITIES], n_trips)
    dest_lat = np.where(abroad, np.array([c[1] for c in FOREIGN_CITIES])[city], w.term_lat[anchor])
    dest_lon = np.where(abroad, np.array([c[2] for c in FOREIGN_CITIES])[city], w.term_lon[anchor])
    dest_country = np.where(abroad, np.array([COUNTRY_INDEX[c[0]] for c in FOREIGN_CITIES])[city],
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


def _fraudsters(rng, w: World, n: int, devices: _Ids, ips: _Ids) -> _Fraudsters:
    abroad = rng.random(n) < 0.4
    city = pick_weighted(rng, [f for *_, f in FOREIGN_CITIES], n)
    xy = rng.uniform(0, GRID, (n, 2))
    glat, glon = grid_to_latlon(xy)
    lat = np.where(abroad, np.array([c[1] for c in FOREIGN_CITIES])[city] + rng.normal(0, 0.05, n), glat)
    lon = np.where(abroad, np.array([c[2] for c in FOREIGN_CITIES])[city] + rng.normal(0, 0.05, n), glon)
    country = np.where(abroad, np.array([COUNTRY_INDEX[c[0]] for c in FOREIGN_CITIES])[city],
                       grid_country(glat, glon)).astype(np.int16)
    return _Fraudsters(devices.fresh(n), ips.fresh(n), lat, lon, country)


def _ecom_terminals(rng, w: World, preferred: tuple[str, ...], n: int) -> np.ndarray:
    prefer = np.isin(w.term_mcc[w.ecom_terms], [MCC_INDEX[m] for m in preferred])
    pool = w.ecom_terms[prefer] if prefer.any() else w.ecom_terms
    return np.where(rng.random(n) < 0.75, pool[rng.integers(0, len(pool), n)],
                    w.ecom_terms[rng.integers(0, len(w.ecom_terms), n)])


def _online_fraud(rng, w: World, gang: _Fraudsters, scenario: int, case: np.ndarray, card: np.ndarray,
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
    foreign = w.foreign_terms[pick_weighted(
        rng, np.array([f for *_, f in FOREIGN_CITIES])[w.foreign_city], events)]
    domestic_pool = np.concatenate([w.pos_terms, w.atm_terms])
    options = domestic_pool[rng.integers(0, len(domestic_pool), (events, 6))]
    far = distance_km(legit["lat"][anchor][:, None], legit["lon"][anchor][:, None], w.term_lat[options], w.term_lon[options])
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


def _compromise_terminals(rng, w: World, legit, budget: float, start_ms, end_ms, case0) -> None:
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
    rows = ragged_arange(lo, hi - lo)
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


def card_transactions(rng, w: World, start_ms, end_ms, fraud_rate: float, progress) -> dict[str, np.ndarray]:
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
def card_labels(rng, w: World, tx, ids: np.ndarray, card_ids: np.ndarray, end_ms: int) -> dict:
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
