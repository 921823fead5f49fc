"""Jitted feature kernels, each paired with a plain-Python reference of the same semantics.

Every kernel is a 1-D loop over one batch, in arrival order, that reads the state of the row's
entity *before* the row, writes the features into float32 ``out`` arrays, then folds the row
into that state. State rows are indexed by dense entity slots (``-1`` = entity absent: outputs
0, state untouched). Each kernel owns one packed state array, so a row costs one or two cache
lines per kernel instead of one per field; times are stored as float64 milliseconds (exact
below 2**53) so ``-inf`` can mean "never seen" and decays to zero on its own.

The references are written from the definitions (sums over each entity's full history in
dicts), not by transcribing the kernels, so a parity test catches logic slips and not only
typing slips. :data:`KERNELS` maps each kernel to its reference and to how a batch is fed to
both; ``detectors.features`` builds its plan from it, ``tests/test_features.py`` runs parity
over it and ``bench/features_bench.py`` times it.

>>> import numpy as np
>>> state = np.full((2, 3), -np.inf); state[:, 1:] = 0.0
>>> out_first, out_gap = np.zeros(3, np.float32), np.zeros(3, np.float32)
>>> out_counts, out_sums = np.zeros((1, 3), np.float32), np.zeros((1, 3), np.float32)
>>> decayed_activity(np.array([0, 0, 1]), np.array([0, 3_600_000, 0]), np.ones(3),
...                  np.array([3_600_000.0]), 1, state,
...                  out_first, out_gap, out_counts, out_sums)
>>> out_first.tolist(), out_gap.tolist(), [round(float(c), 3) for c in out_counts[0]]
([1.0, 0.0, 1.0], [2592000.0, 3600.0, 2592000.0], [0.0, 0.368, 0.0])
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any, Callable

import numba
import numpy as np

from riskstream.schemas.events import HOUR_MS as EVENT_HOUR_MS

HOUR_MS = float(EVENT_HOUR_MS)  # float: the kernels' time arithmetic is in float64
DAY_MS = 24 * HOUR_MS

# "Seconds since previous" of a first-seen entity: a first sighting is treated like a long
# silence rather than 0 (which would look like a burst); card_first_seen says which it was.
MAX_GAP_S = 30 * 86_400.0
# z-scores divide by at least this: one currency unit, or 10% of the mean, so a card that
# always pays the same amount does not turn a 1-cent difference into a huge z.
STD_FLOOR = 1.0
STD_FLOOR_REL = 0.1
# Fraud rates are (positives + W*p0) / (count + W): a new entity reads p0, not 0/0, and one
# confirmed fraud on a fresh card moves it to 1/(1+W), not 100%.
FRAUD_PRIOR_RATE = 0.002
FRAUD_PRIOR_WEIGHT = 5.0
# Ring timestamps are int32 seconds from 2020-01-01, so a ring row (codes + times) fits
# one 64-byte cache line for K=8; int32 seconds last until 2088.
RING_EPOCH_S = 1_577_836_800
EARTH_RADIUS_KM = 6371.0088
# Two swipes a few seconds apart would give an infinite speed; below a minute, the distance
# alone is the signal.
MIN_TRAVEL_HOURS = 1.0 / 60.0
NIGHT_END_HOUR = 6  # 00:00-05:59 UTC


# --------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------
@numba.njit(cache=True)
def decayed_activity(slots, t_ms, amount, taus_ms, n_sums, state,
                     out_first_seen, out_since_prev_s, out_counts, out_sums):
    """Exponentially decayed transaction count per time constant, and amount sum for the
    first ``n_sums`` of them (sharing one exp per time constant).

    state row: [latest event time, counts..., sums...]. A decayed count with time constant
    tau equals the trailing-window count of width tau under a steady rate, at O(1) state; it
    weighs an event of age a by exp(-a/tau) instead of 1 inside / 0 outside the window.
    An out-of-order event is added with its weight at the entity's latest time, and reads
    the state as of that latest time.
    """
    nc = taus_ms.shape[0]
    for i in range(slots.shape[0]):
        s = slots[i]
        if s < 0:
            out_first_seen[i] = 0.0
            out_since_prev_s[i] = 0.0
            for k in range(nc):
                out_counts[k, i] = 0.0
            for k in range(n_sums):
                out_sums[k, i] = 0.0
            continue
        t = np.float64(t_ms[i])
        t_ref = state[s, 0]
        gap = t - t_ref
        out_first_seen[i] = 1.0 if t_ref == -np.inf else 0.0
        out_since_prev_s[i] = min(max(gap, 0.0) / 1000.0, MAX_GAP_S)
        if gap >= 0.0:
            for k in range(nc):
                d = math.exp(-gap / taus_ms[k])
                c = state[s, 1 + k] * d
                out_counts[k, i] = c
                state[s, 1 + k] = c + 1.0
                if k < n_sums:
                    v = state[s, 1 + nc + k] * d
                    out_sums[k, i] = v
                    state[s, 1 + nc + k] = v + amount[i]
            state[s, 0] = t
        else:
            for k in range(nc):
                w = math.exp(gap / taus_ms[k])
                out_counts[k, i] = state[s, 1 + k]
                state[s, 1 + k] += w
                if k < n_sums:
                    out_sums[k, i] = state[s, 1 + nc + k]
                    state[s, 1 + nc + k] += amount[i] * w


@numba.njit(cache=True)
def decayed_amount_profile(slots, t_ms, amount, tau_ms, state, out_mean, out_std, out_zscore, out_ratio):
    """Exponentially weighted mean and standard deviation of the amount, and where this
    amount sits in it ("amount relative to history": the only features that look at the
    row's own amount). state row: [latest time, weight, mean, M2], West's weighted update,
    numerically stable where sum/sum-of-squares would cancel on large amounts."""
    for i in range(slots.shape[0]):
        s = slots[i]
        if s < 0:
            out_mean[i] = 0.0
            out_std[i] = 0.0
            out_zscore[i] = 0.0
            out_ratio[i] = 0.0
            continue
        t = np.float64(t_ms[i])
        t_ref = state[s, 0]
        gap = t - t_ref
        if gap >= 0.0:
            d = math.exp(-gap / tau_ms)
            w = 1.0
        else:
            d = 1.0
            w = math.exp(gap / tau_ms)
        c = state[s, 1] * d
        mu = state[s, 2]
        m2 = state[s, 3] * d
        x = amount[i]
        if c > 0.0:
            std = math.sqrt(max(m2 / c, 0.0))
            out_mean[i] = mu
            out_std[i] = std
            out_zscore[i] = (x - mu) / max(std, STD_FLOOR, STD_FLOOR_REL * abs(mu))
            out_ratio[i] = (x + 1.0) / (mu + 1.0)
        else:
            out_mean[i] = 0.0
            out_std[i] = 0.0
            out_zscore[i] = 0.0
            out_ratio[i] = 1.0
        c2 = c + w
        delta = x - mu
        mu2 = mu + w * delta / c2
        state[s, 0] = t if gap >= 0.0 else t_ref
        state[s, 1] = c2
        state[s, 2] = mu2
        state[s, 3] = m2 + w * delta * (x - mu2)


@numba.njit(cache=True)
def decayed_fraud_rate(slots, t_ms, taus_ms, label_slots, label_event_ms, label_time_ms,
                       state, out_rates):
    """Decayed confirmed-fraud count over decayed transaction count, with a prior.

    Labels come sorted by label time and are folded in just before the first row whose event
    time reaches their label time, so a row never sees a label that was not known yet. A
    label counts with the weight its transaction has in the denominator (its age at the
    entity's latest time). state row: [latest time, counts..., positives...].
    Returns how many labels were applied.
    """
    nk = taus_ms.shape[0]
    n_labels = label_slots.shape[0]
    p = 0
    for i in range(slots.shape[0]):
        t = np.float64(t_ms[i])
        while p < n_labels and label_time_ms[p] <= t:
            ls = label_slots[p]
            if ls >= 0 and state[ls, 0] != -np.inf:
                age = max(state[ls, 0] - np.float64(label_event_ms[p]), 0.0)
                for k in range(nk):
                    state[ls, 1 + nk + k] += math.exp(-age / taus_ms[k])
            p += 1
        s = slots[i]
        if s < 0:
            for k in range(nk):
                out_rates[k, i] = 0.0
            continue
        gap = t - state[s, 0]
        for k in range(nk):
            d = math.exp(-gap / taus_ms[k]) if gap >= 0.0 else 1.0
            c = state[s, 1 + k] * d
            pos = state[s, 1 + nk + k] * d
            out_rates[k, i] = min((pos + FRAUD_PRIOR_WEIGHT * FRAUD_PRIOR_RATE) / (c + FRAUD_PRIOR_WEIGHT), 1.0)
            if gap >= 0.0:
                state[s, 1 + k] = c + 1.0
                state[s, 1 + nk + k] = pos
            else:
                state[s, 1 + k] += math.exp(gap / taus_ms[k])
        if gap >= 0.0:
            state[s, 0] = t
    return p


@numba.njit(cache=True)
def distinct_recent(slots, t_ms, member_codes, window_s, state, out_distinct):
    """Distinct members (merchants of a card, cards of a device) last seen within the window.

    state row: K member codes then K last-seen times (int32 seconds since RING_EPOCH_S); it
    keeps the K members with the latest last-seen times, so the count is exact up to K and
    saturates at K. Code 0 = empty / member absent.
    """
    k_ring = state.shape[1] // 2
    for i in range(slots.shape[0]):
        s = slots[i]
        if s < 0:
            out_distinct[i] = 0.0
            continue
        t_s = t_ms[i] // 1000 - RING_EPOCH_S
        since = t_s - window_s
        n = 0
        for j in range(k_ring):
            if state[s, j] != 0 and state[s, k_ring + j] > since:
                n += 1
        out_distinct[i] = n
        code = member_codes[i]
        if code == 0:
            continue
        hit = -1
        for j in range(k_ring):
            if state[s, j] == code:
                hit = j
                break
        if hit >= 0:
            if t_s > state[s, k_ring + hit]:
                state[s, k_ring + hit] = t_s
            continue
        # an empty entry, else the one seen longest ago, if this member is more recent
        victim = 0
        for j in range(k_ring):
            if state[s, j] == 0:
                victim = j
                break
            if state[s, k_ring + j] < state[s, k_ring + victim]:
                victim = j
        if state[s, victim] == 0 or t_s > state[s, k_ring + victim]:
            state[s, victim] = code
            state[s, k_ring + victim] = t_s


@numba.njit(cache=True)
def novelty_recent(slots, member_codes, state, out_is_new):
    """1 when the member (a card's country, a card's device) is not among the entity's last K
    distinct ones, in arrival order, and the entity has one on record; 0 for a first
    sighting, which card_first_seen already says. state row: K codes, most recent first."""
    k_set = state.shape[1]
    for i in range(slots.shape[0]):
        s = slots[i]
        code = member_codes[i]
        if s < 0 or code == 0:
            out_is_new[i] = 0.0
            continue
        hit = -1
        for j in range(k_set):
            if state[s, j] == code:
                hit = j
                break
        out_is_new[i] = 1.0 if (hit < 0 and state[s, 0] != 0) else 0.0
        j = hit if hit >= 0 else k_set - 1
        while j > 0:
            state[s, j] = state[s, j - 1]
            j -= 1
        state[s, 0] = code


@numba.njit(cache=True)
def geo_velocity(slots, t_ms, lat, lon, state, out_km, out_kmh):
    """Great-circle distance and implied speed from the entity's latest located transaction
    (by event time). Rows without lat/lon read 0 and leave the state alone.
    state row: [time of latest located transaction, lat, lon]."""
    for i in range(slots.shape[0]):
        s = slots[i]
        if s < 0 or math.isnan(lat[i]) or math.isnan(lon[i]):
            out_km[i] = 0.0
            out_kmh[i] = 0.0
            continue
        t = np.float64(t_ms[i])
        t_ref = state[s, 0]
        if t_ref == -np.inf:
            out_km[i] = 0.0
            out_kmh[i] = 0.0
        else:
            km = haversine_km(state[s, 1], state[s, 2], lat[i], lon[i])
            out_km[i] = km
            out_kmh[i] = km / max(abs(t - t_ref) / HOUR_MS, MIN_TRAVEL_HOURS)
        if t >= t_ref:
            state[s, 0] = t
            state[s, 1] = lat[i]
            state[s, 2] = lon[i]


@numba.njit(cache=True)
def haversine_km(lat1, lon1, lat2, lon2):
    p1 = math.radians(lat1)
    p2 = math.radians(lat2)
    a = (math.sin((p2 - p1) / 2.0) ** 2
         + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2.0) ** 2)
    return 2.0 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(a, 1.0)))


@numba.njit(cache=True)
def calendar(t_ms, out_hour, out_is_night, out_is_weekend):
    """Hour of day, night and weekend in UTC: events carry no time zone, and the card's
    country is not a reliable one."""
    for i in range(t_ms.shape[0]):
        hour = (t_ms[i] // 3_600_000) % 24
        weekday = (t_ms[i] // 86_400_000 + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
        out_hour[i] = hour
        out_is_night[i] = 1.0 if hour < NIGHT_END_HOUR else 0.0
        out_is_weekend[i] = 1.0 if weekday >= 5 else 0.0


@numba.njit(cache=True)
def assign_last(slots, values, dest):
    """dest[slot] = value of the slot's last row (numpy fancy assignment does not promise
    which duplicate wins)."""
    for i in range(slots.shape[0]):
        if slots[i] >= 0:
            dest[slots[i]] = values[i]


# --------------------------------------------------------------------------------------
# Id index: entity id -> dense slot, without a Python dict on the hot path
# --------------------------------------------------------------------------------------
# A Python dict lookup per id costs 3 cache misses plus the interpreter (~300 ns/id measured
# on the build machine with 100k ids); this open-addressing table keyed by a 64-bit hash of
# the id's UTF-8 bytes costs about one miss. Two ids share state only if their hashes
# collide: odds about n**2 / 2**65, ~1e-7 at 2M entities.
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK64 = (1 << 64) - 1


@numba.njit(cache=True)
def hash_ids(blob, out):
    """out[i] = 64-bit hash of the i-th NUL-separated id in blob (0 for an empty id, never 0
    otherwise): FNV-1a, then the splitmix64 finaliser because the table index takes the low
    bits. UTF-8 never puts a 0 byte inside a multi-byte character, so NUL splits any ids
    that do not themselves contain NUL. Returns the number of ids found."""
    n = 0
    h = np.uint64(_FNV_OFFSET)
    empty = True
    for j in range(blob.shape[0] + 1):
        if j == blob.shape[0] or blob[j] == 0:
            if n < out.shape[0]:
                if empty:
                    out[n] = 0
                else:
                    h ^= h >> np.uint64(30)
                    h *= np.uint64(0xBF58476D1CE4E5B9)
                    h ^= h >> np.uint64(27)
                    h *= np.uint64(0x94D049BB133111EB)
                    h ^= h >> np.uint64(31)
                    v = np.int64(h)
                    out[n] = v if v != 0 else 1
            n += 1
            h = np.uint64(_FNV_OFFSET)
            empty = True
        else:
            h = (h ^ np.uint64(blob[j])) * np.uint64(_FNV_PRIME)
            empty = False
    return n


@numba.njit(cache=True)
def index_probe(hashes, index, out_slots):
    """Slots of hashes in a linear-probing table of (hash, slot) rows; -1 for hash 0 (absent
    id), -2 for not found. Returns the number not found."""
    mask = index.shape[0] - 1
    missing = 0
    for i in range(hashes.shape[0]):
        h = hashes[i]
        if h == 0:
            out_slots[i] = -1
            continue
        j = h & mask
        while True:
            k = index[j, 0]
            if k == h:
                out_slots[i] = index[j, 1]
                break
            if k == 0:
                out_slots[i] = -2
                missing += 1
                break
            j = (j + 1) & mask
    return missing


@numba.njit(cache=True)
def index_insert(index, hashes, slots):
    mask = index.shape[0] - 1
    for i in range(hashes.shape[0]):
        h = hashes[i]
        j = h & mask
        while index[j, 0] != 0 and index[j, 0] != h:
            j = (j + 1) & mask
        index[j, 0] = h
        index[j, 1] = slots[i]


@numba.njit(cache=True)
def index_delete(index, hashes):
    """Backward-shift deletion: later rows of the probe chain move up, so lookups stay
    correct without tombstones piling up under eviction churn."""
    mask = index.shape[0] - 1
    for n in range(hashes.shape[0]):
        h = hashes[n]
        i = h & mask
        while index[i, 0] != h:
            if index[i, 0] == 0:
                break
            i = (i + 1) & mask
        if index[i, 0] != h:
            continue
        done = False
        while not done:
            index[i, 0] = 0
            index[i, 1] = -1
            k = i
            while True:
                k = (k + 1) & mask
                kh = index[k, 0]
                if kh == 0:
                    done = True
                    break
                home = kh & mask
                if (i <= k and (home <= i or home > k)) or (i > k and home <= i and home > k):
                    index[i, 0] = kh
                    index[i, 1] = index[k, 1]
                    i = k
                    break


def stable_hash64_reference(value: str) -> int:
    """hash_ids of one id, in plain Python."""
    if not value:
        return 0
    h = _FNV_OFFSET
    for b in value.encode().replace(b"\0", b"\xff\xfe"):
        h = ((h ^ b) * _FNV_PRIME) & _MASK64
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & _MASK64
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & _MASK64
    h ^= h >> 31
    h = h - (1 << 64) if h >= 1 << 63 else h
    return h or 1


# --------------------------------------------------------------------------------------
# References: per-row loops over dicts of full histories, from the definitions
# --------------------------------------------------------------------------------------
def _latest(hist: list) -> float:
    return max(h[0] for h in hist)


def decayed_activity_reference(keys, t_ms, amount, count_taus_ms, sum_taus_ms, state,
                               out_first_seen, out_since_prev_s, out_counts, out_sums):
    for i, key in enumerate(keys):
        if key is None:
            out_first_seen[i] = out_since_prev_s[i] = 0.0
            out_counts[:, i] = 0.0
            out_sums[:, i] = 0.0
            continue
        t = float(t_ms[i])
        hist = state.setdefault(key, [])
        if not hist:
            out_first_seen[i], out_since_prev_s[i] = 1.0, MAX_GAP_S
            out_counts[:, i] = 0.0
            out_sums[:, i] = 0.0
        else:
            latest = _latest(hist)
            now = max(t, latest)
            out_first_seen[i] = 0.0
            out_since_prev_s[i] = min(max(t - latest, 0.0) / 1000.0, MAX_GAP_S)
            for k, tau in enumerate(count_taus_ms):
                out_counts[k, i] = sum(math.exp(-(now - tj) / tau) for tj, _ in hist)
            for k, tau in enumerate(sum_taus_ms):
                out_sums[k, i] = sum(a * math.exp(-(now - tj) / tau) for tj, a in hist)
        hist.append((t, float(amount[i])))


def decayed_amount_profile_reference(keys, t_ms, amount, tau_ms, state, out_mean, out_std, out_zscore, out_ratio):
    for i, key in enumerate(keys):
        if key is None:
            out_mean[i] = out_std[i] = out_zscore[i] = out_ratio[i] = 0.0
            continue
        t, x = float(t_ms[i]), float(amount[i])
        hist = state.setdefault(key, [])
        if hist:
            now = max(t, _latest(hist))
            w = [math.exp(-(now - tj) / tau_ms) for tj, _ in hist]
            c = sum(w)
            mu = sum(wj * a for wj, (_, a) in zip(w, hist)) / c
            std = math.sqrt(sum(wj * (a - mu) ** 2 for wj, (_, a) in zip(w, hist)) / c)
            out_mean[i], out_std[i] = mu, std
            out_zscore[i] = (x - mu) / max(std, STD_FLOOR, STD_FLOOR_REL * abs(mu))
            out_ratio[i] = (x + 1.0) / (mu + 1.0)
        else:
            out_mean[i] = out_std[i] = out_zscore[i] = 0.0
            out_ratio[i] = 1.0
        hist.append((t, x))


def decayed_fraud_rate_reference(keys, t_ms, taus_ms, label_keys, label_event_ms, label_time_ms,
                                 state, out_rates):
    """state[key] = {"txn": [event times], "fraud": [effective event times of applied labels]}."""
    pending = sorted(range(len(label_keys)), key=lambda j: label_time_ms[j])
    applied = 0
    for i, key in enumerate(keys):
        t = float(t_ms[i])
        while applied < len(pending) and label_time_ms[pending[applied]] <= t:
            j = pending[applied]
            entity = state.get(label_keys[j])
            if label_keys[j] is not None and entity and entity["txn"]:
                # A label's transaction counts at its age as of the entity's latest time, and
                # never younger than that latest time.
                entity["fraud"].append(min(float(label_event_ms[j]), max(entity["txn"])))
            applied += 1
        if key is None:
            out_rates[:, i] = 0.0
            continue
        entity = state.setdefault(key, {"txn": [], "fraud": []})
        now = max([t] + entity["txn"])
        for k, tau in enumerate(taus_ms):
            c = sum(math.exp(-(now - tj) / tau) for tj in entity["txn"])
            pos = sum(math.exp(-(now - tj) / tau) for tj in entity["fraud"])
            out_rates[k, i] = min((pos + FRAUD_PRIOR_WEIGHT * FRAUD_PRIOR_RATE) / (c + FRAUD_PRIOR_WEIGHT), 1.0)
        entity["txn"].append(t)
    return applied


def distinct_recent_reference(keys, t_ms, member_codes, window_s, state, out_distinct, k_ring):
    for i, key in enumerate(keys):
        if key is None:
            out_distinct[i] = 0.0
            continue
        t_s = int(t_ms[i]) // 1000 - RING_EPOCH_S
        last_seen = state.setdefault(key, {})
        out_distinct[i] = min(k_ring, sum(1 for ts in last_seen.values() if ts > t_s - window_s))
        code = int(member_codes[i])
        if code != 0:
            last_seen[code] = max(last_seen.get(code, t_s), t_s)


def novelty_recent_reference(keys, member_codes, state, out_is_new, k_set):
    for i, key in enumerate(keys):
        code = int(member_codes[i])
        if key is None or code == 0:
            out_is_new[i] = 0.0
            continue
        hist = state.setdefault(key, [])
        recent: list[int] = []
        for c in reversed(hist):
            if c not in recent:
                recent.append(c)
            if len(recent) == k_set:
                break
        out_is_new[i] = 1.0 if (hist and code not in recent) else 0.0
        hist.append(code)


def geo_velocity_reference(keys, t_ms, lat, lon, state, out_km, out_kmh):
    for i, key in enumerate(keys):
        if key is None or math.isnan(lat[i]) or math.isnan(lon[i]):
            out_km[i] = out_kmh[i] = 0.0
            continue
        t = float(t_ms[i])
        hist = state.setdefault(key, [])
        if hist:
            # latest by event time; among equal times, the last to arrive
            t0, _, lat0, lon0 = max(hist, key=lambda h: (h[0], h[1]))
            p1, p2 = math.radians(lat0), math.radians(float(lat[i]))
            dlat, dlon = p2 - p1, math.radians(float(lon[i]) - lon0)
            a = math.sin(dlat / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dlon / 2) ** 2
            km = 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(a, 1.0)))
            out_km[i], out_kmh[i] = km, km / max(abs(t - t0) / HOUR_MS, MIN_TRAVEL_HOURS)
        else:
            out_km[i] = out_kmh[i] = 0.0
        hist.append((t, len(hist), float(lat[i]), float(lon[i])))


def calendar_reference(t_ms, out_hour, out_is_night, out_is_weekend):
    for i, t in enumerate(t_ms):
        dt = datetime.fromtimestamp(int(t) // 1000, tz=timezone.utc)
        out_hour[i] = dt.hour
        out_is_night[i] = 1.0 if dt.hour < NIGHT_END_HOUR else 0.0
        out_is_weekend[i] = 1.0 if dt.weekday() >= 5 else 0.0


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepInput:
    """What one kernel call sees of a batch. ``keys`` are slots (int64, -1 absent) for the
    kernels and hashable ids (None absent) for the references."""

    keys: Any
    t_ms: np.ndarray
    amount: np.ndarray
    member_codes: np.ndarray | None = None
    lat: np.ndarray | None = None
    lon: np.ndarray | None = None
    label_keys: Any = None
    label_event_ms: np.ndarray | None = None
    label_time_ms: np.ndarray | None = None


@dataclass(frozen=True)
class KernelSpec:
    """One kernel, its reference, its state layout and its outputs, for a given parameter
    dict. ``run`` feeds a StepInput to the kernel (slots + state array), ``run_reference``
    to the reference (keys + dict); both write rows of ``out`` (n_outputs x n)."""

    name: str
    kernel: Callable
    reference: Callable
    outputs: Callable[[dict], tuple[str, ...]]
    state_layout: Callable[[dict], tuple[np.dtype, int, float]]  # dtype, row width, fill
    run: Callable[[dict, StepInput, np.ndarray, np.ndarray], int]
    run_reference: Callable[[dict, StepInput, dict, np.ndarray], int]


def _f64(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def _activity_outputs(p):
    return (("first_seen", "seconds_since_prev") + tuple(f"txn_count_{w}" for w in p["counts"])
            + tuple(f"amount_sum_{w}" for w in p["sums"]))


@functools.lru_cache(maxsize=64)
def _taus(names: tuple[str, ...]) -> np.ndarray:
    # cached: these tiny arrays were a visible share of the per-batch fixed cost
    taus = _f64([WINDOWS_MS[w] for w in names])
    taus.setflags(write=False)
    return taus


WINDOWS_MS = {"1h": HOUR_MS, "1d": DAY_MS, "7d": 7 * DAY_MS, "30d": 30 * DAY_MS}


def _run_activity(p, x, state, out):
    nc = len(p["counts"])
    if tuple(p["sums"]) != tuple(p["counts"][: len(p["sums"])]):
        raise ValueError("decayed_activity sums must use the first of its count windows")
    decayed_activity(x.keys, x.t_ms, x.amount, _taus(p["counts"]), len(p["sums"]), state,
                     out[0], out[1], out[2:2 + nc], out[2 + nc:])
    return 0


def _ref_activity(p, x, state, out):
    nc = len(p["counts"])
    decayed_activity_reference(x.keys, x.t_ms, x.amount, _taus(p["counts"]), _taus(p["sums"]), state,
                               out[0], out[1], out[2:2 + nc], out[2 + nc:])
    return 0


def _run_profile(p, x, state, out):
    decayed_amount_profile(x.keys, x.t_ms, x.amount, WINDOWS_MS[p["window"]], state, out[0], out[1], out[2], out[3])
    return 0


def _ref_profile(p, x, state, out):
    decayed_amount_profile_reference(x.keys, x.t_ms, x.amount, WINDOWS_MS[p["window"]], state,
                                     out[0], out[1], out[2], out[3])
    return 0


def _run_fraud(p, x, state, out):
    return decayed_fraud_rate(x.keys, x.t_ms, _taus(p["windows"]), x.label_keys, x.label_event_ms,
                              x.label_time_ms, state, out)


def _ref_fraud(p, x, state, out):
    return decayed_fraud_rate_reference(x.keys, x.t_ms, _taus(p["windows"]), x.label_keys, x.label_event_ms,
                                        x.label_time_ms, state, out)


def _run_distinct(p, x, state, out):
    distinct_recent(x.keys, x.t_ms, x.member_codes, np.int64(WINDOWS_MS[p["window"]] // 1000), state, out[0])
    return 0


def _ref_distinct(p, x, state, out):
    distinct_recent_reference(x.keys, x.t_ms, x.member_codes, int(WINDOWS_MS[p["window"]] // 1000), state,
                              out[0], p["k"])
    return 0


def _run_novelty(p, x, state, out):
    novelty_recent(x.keys, x.member_codes, state, out[0])
    return 0


def _ref_novelty(p, x, state, out):
    novelty_recent_reference(x.keys, x.member_codes, state, out[0], p["k"])
    return 0


def _run_geo(p, x, state, out):
    geo_velocity(x.keys, x.t_ms, x.lat, x.lon, state, out[0], out[1])
    return 0


def _ref_geo(p, x, state, out):
    geo_velocity_reference(x.keys, x.t_ms, x.lat, x.lon, state, out[0], out[1])
    return 0


def kernel_table(specs: tuple[KernelSpec, ...]) -> MappingProxyType:
    """Kernels by name, read-only; a name given twice raises."""
    table: dict[str, KernelSpec] = {}
    for spec in specs:
        if spec.name in table:
            raise ValueError(f"kernel {spec.name!r} listed twice")
        table[spec.name] = spec
    return MappingProxyType(table)


# Every kernel, with its plain reference: the parity tests and bench/features_bench read this.
KERNELS = kernel_table((
    KernelSpec(
        "decayed_activity", decayed_activity, decayed_activity_reference, _activity_outputs,
        lambda p: (np.dtype(np.float64), 1 + len(p["counts"]) + len(p["sums"]), 0.0),
        _run_activity, _ref_activity),
    KernelSpec(
        "decayed_amount_profile", decayed_amount_profile, decayed_amount_profile_reference,
        lambda p: tuple(f"amount_{f}_{p['window']}" for f in ("mean", "std", "zscore", "ratio")),
        lambda p: (np.dtype(np.float64), 4, 0.0), _run_profile, _ref_profile),
    KernelSpec(
        "decayed_fraud_rate", decayed_fraud_rate, decayed_fraud_rate_reference,
        lambda p: tuple(f"fraud_rate_{w}" for w in p["windows"]),
        lambda p: (np.dtype(np.float64), 1 + 2 * len(p["windows"]), 0.0), _run_fraud, _ref_fraud),
    KernelSpec(
        "distinct_recent", distinct_recent, distinct_recent_reference,
        lambda p: (f"distinct_{p['member']}s_{p['window']}",),
        lambda p: (np.dtype(np.int32), 2 * p["k"], 0), _run_distinct, _ref_distinct),
    KernelSpec(
        "novelty_recent", novelty_recent, novelty_recent_reference,
        lambda p: (f"new_{p['member']}",),
        lambda p: (np.dtype(np.int32), p["k"], 0), _run_novelty, _ref_novelty),
    KernelSpec(
        "geo_velocity", geo_velocity, geo_velocity_reference,
        lambda p: ("km_from_prev", "speed_kmh_from_prev"),
        lambda p: (np.dtype(np.float64), 3, 0.0), _run_geo, _ref_geo),
))


def fresh_state(spec: KernelSpec, params: dict, n_rows: int) -> np.ndarray:
    """A state array of n_rows never-seen entities (time column -inf where there is one)."""
    dtype, width, fill = spec.state_layout(params)
    state = np.full((n_rows, width), fill, dtype=dtype)
    if dtype == np.float64:
        state[:, 0] = -np.inf
    return state
