"""Jitted feature kernels, each paired with a plain-Python reference of the same semantics.

Every kernel is a 1-D loop over one batch, in arrival order, that reads the state of the row's
entity *before* the row, writes the features into float32 ``out`` arrays, then folds the row
into that state. State rows are indexed by dense entity slots (``-1`` = entity absent: outputs
0, state untouched). Each kernel owns one packed state array, so a row costs one or two cache
lines per kernel instead of one per field; times are stored as float64 milliseconds (exact
below 2**53) so ``-inf`` can mean "never seen" and decays to zero on its own.

The references are written from the definitions (sums over each entity's full history in
dicts), not by transcribing the kernels, so a parity test catches logic slips and not only
typing slips. The references are in ``detectors.kernel_references``; ``detectors.kernel_registry.KERNELS``
maps each kernel to its reference and to how a batch is fed to both: ``detectors.features``
builds its plan from it, ``tests/test_features.py`` runs parity over it and
``bench/features_bench.py`` times it.

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

import math

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


