"""Plain-Python references of the feature kernels (``detectors.kernels``): per-row loops over
dicts of each entity's full history, written from the definitions, not by transcribing the
kernels, so that the parity tests catch logic slips and not only typing slips."""

from __future__ import annotations

import math
from datetime import datetime, timezone

from riskstream.detectors.kernels import (
    EARTH_RADIUS_KM,
    FRAUD_PRIOR_RATE,
    FRAUD_PRIOR_WEIGHT,
    HOUR_MS,
    MAX_GAP_S,
    MIN_TRAVEL_HOURS,
    NIGHT_END_HOUR,
    RING_EPOCH_S,
    STD_FLOOR,
    STD_FLOOR_REL,
)


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
