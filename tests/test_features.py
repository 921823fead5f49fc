"""FeatureEngine: kernel/reference parity, window and label semantics, state management."""

from __future__ import annotations

import math

import numpy as np
import pytest

from riskstream.detectors.features import (
    FEATURE_NAMES,
    PLAN,
    FeatureEngine,
    ReferenceFeatures,
    id_hashes,
    member_codes,
    stable_code,
)
from riskstream.detectors.id_index import index_delete, index_insert, index_probe, stable_hash64_reference
from riskstream.detectors.kernel_registry import KERNELS, StepInput, fresh_state
from riskstream.detectors.kernels import FRAUD_PRIOR_RATE, FRAUD_PRIOR_WEIGHT, MAX_GAP_S
from riskstream.schemas.transactions import TransactionBatch

T0 = 1_700_000_000_000
HOUR = 3_600_000
DAY = 24 * HOUR
RTOL, ATOL = 1e-5, 1e-5


def random_batch(rng: np.random.Generator, n: int, t_start: int, n_cards: int = 40,
                 partitions: int = 4) -> TransactionBatch:
    """Few cards (so they repeat inside a batch), optional entities often absent, some NaN
    locations, event times with disorder of up to an hour."""
    gaps = rng.exponential(20 * 60_000, n).astype(np.int64)
    t = t_start + np.cumsum(gaps) + rng.integers(-HOUR, HOUR, n) * (rng.random(n) < 0.2)

    def ids(prefix: str, pool: int, absent: float) -> list[str]:
        return [("" if rng.random() < absent else f"{prefix}{rng.integers(pool)}") for _ in range(n)]

    lat = rng.uniform(-60, 60, n)
    lon = rng.uniform(-170, 170, n)
    lat[rng.random(n) < 0.2] = np.nan
    lon[rng.random(n) < 0.1] = np.nan
    cards = ids("card", n_cards, 0.0)
    batch = TransactionBatch.from_columns({
        "transaction_id": [f"tx{t_start}_{i}" for i in range(n)],
        "event_time": t,
        "card_id": cards,
        "merchant_id": ids("m", 15, 0.0),
        "amount": np.round(rng.lognormal(3, 1.2, n), 2),
        "lat": lat,
        "lon": lon,
        "terminal_id": ids("term", 25, 0.3),
        "device_id": ids("dev", 30, 0.4),
        "ip": ids("ip", 30, 0.5),
        "account_id": ids("acct", 30, 0.5),
        "customer_id": ids("cust", 30, 0.7),
        "country": [rng.choice(["", "FR", "DE", "US", "BR", "JP", "NG"]) for _ in range(n)],
    })
    batch.partition = np.array([stable_code(c) % partitions for c in cards], dtype=np.int32)
    return batch


def labels_for(rng: np.random.Generator, batch: TransactionBatch):
    """Fraud labels for ~15% of a batch, known 1 h to 3 days after the transaction."""
    pick = rng.random(batch.n) < 0.15
    event = batch.event_time_ms[pick]
    label = event + rng.integers(HOUR, 3 * DAY, pick.sum())
    keys = {"card": batch.card_id[pick], "merchant": batch.merchant_id[pick],
            "terminal": batch.optional["terminal_id"][pick]}
    return keys, event, label, np.ones(pick.sum(), dtype=np.int8)


def one_batch(rows: list[dict]) -> TransactionBatch:
    cols = {k: [r.get(k, "") for r in rows] for k in ("card_id", "merchant_id", "terminal_id", "device_id", "country")}
    cols["event_time"] = [r["t"] for r in rows]
    cols["amount"] = [r.get("amount", 10.0) for r in rows]
    cols["lat"] = [r.get("lat", math.nan) for r in rows]
    cols["lon"] = [r.get("lon", math.nan) for r in rows]
    batch = TransactionBatch.from_columns(cols)
    batch.partition = np.array([r.get("partition", 0) for r in rows], dtype=np.int32)
    return batch


# --------------------------------------------------------------------------------------
# Parity
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_engine_matches_reference_on_every_feature(seed):
    rng = np.random.default_rng(seed)
    engine, reference = FeatureEngine(), ReferenceFeatures()
    t = T0
    compared = 0
    for b in range(5):
        batch = random_batch(rng, int(rng.integers(150, 400)), t)
        t = int(batch.event_time_ms.max())
        got, want = engine.compute(batch), reference.compute(batch)
        assert tuple(got) == FEATURE_NAMES == tuple(want)
        for name in FEATURE_NAMES:
            np.testing.assert_allclose(got[name], want[name].astype(np.float32), rtol=RTOL, atol=ATOL,
                                       err_msg=f"{name}, seed {seed}, batch {b}")
            compared += 1
        labels = labels_for(rng, batch)
        engine.apply_labels(*labels)
        reference.apply_labels(*labels)
    assert compared == 5 * len(FEATURE_NAMES)
    # the random batches did exercise the label and geo paths
    assert got["card_fraud_rate_30d"].max() > 2 * FRAUD_PRIOR_RATE
    assert got["card_speed_kmh_from_prev"].max() > 0


def _plan_cases():
    seen = set()
    for step in PLAN:
        key = (step.kernel, repr(sorted(step.params.items())))
        if key not in seen:
            seen.add(key)
            yield pytest.param(step, id=f"{step.entity}-{step.state_key}")


@pytest.mark.parametrize("step", list(_plan_cases()))
@pytest.mark.parametrize("seed", [10, 11, 12])
def test_each_registered_kernel_matches_its_reference(step, seed):
    """Straight off the registry: slots as reference keys, repeated ones, -1 = absent."""
    rng = np.random.default_rng(seed)
    spec = KERNELS[step.kernel]
    n_keys = 12
    state = fresh_state(spec, step.params, n_keys)
    ref_state: dict = {}
    pending: list[tuple[int, int, int]] = []
    t = T0
    for _ in range(4):
        n = 200
        slots = rng.integers(-1, n_keys, n).astype(np.int64)
        t_ms = t + np.cumsum(rng.integers(0, 3 * HOUR, n)) - rng.integers(0, 2 * HOUR, n) * (rng.random(n) < 0.25)
        t = int(t_ms.max())
        amount = rng.lognormal(3, 1, n)
        codes = rng.integers(0, 6, n).astype(np.int32)  # 0 = member absent
        lat, lon = rng.uniform(-80, 80, n), rng.uniform(-180, 180, n)
        lat[rng.random(n) < 0.2] = np.nan
        due = sorted([p for p in pending if p[2] <= t], key=lambda p: p[2])
        pending = [p for p in pending if p[2] > t]
        lk = np.array([p[0] for p in due], dtype=np.int64)
        le = np.array([p[1] for p in due], dtype=np.int64)
        lt = np.array([p[2] for p in due], dtype=np.int64)
        x = StepInput(slots, t_ms, amount, member_codes=codes, lat=lat, lon=lon,
                      label_keys=lk, label_event_ms=le, label_time_ms=lt)
        xr = StepInput([None if s < 0 else int(s) for s in slots], t_ms, amount, member_codes=codes, lat=lat,
                       lon=lon, label_keys=[int(k) for k in lk], label_event_ms=le, label_time_ms=lt)
        out = np.zeros((len(spec.outputs(step.params)), n), dtype=np.float32)
        ref_out = np.zeros(out.shape, dtype=np.float64)
        applied = spec.run(step.params, x, state, out)
        ref_applied = spec.run_reference(step.params, xr, ref_state, ref_out)
        assert applied == ref_applied
        np.testing.assert_allclose(out, ref_out.astype(np.float32), rtol=RTOL, atol=ATOL)
        assert np.abs(out).sum() > 0  # the case did produce signal
        pick = np.flatnonzero((slots >= 0) & (rng.random(n) < 0.2))
        pending += [(int(slots[i]), int(t_ms[i]), int(t_ms[i]) + int(rng.integers(HOUR, 2 * DAY))) for i in pick]


@pytest.mark.parametrize("with_nul", [False, True])
def test_id_hashes_match_the_plain_python_hash(with_nul):
    ids = ["", "a", "card_1", "carte-é", "日本", "x" * 128, "card_1"] + (["a\0b", "a\0c", "a"] if with_nul else [])
    got = id_hashes(np.array(ids, dtype=object))
    assert got.tolist() == [stable_hash64_reference(v) for v in ids]
    assert got[0] == 0 and (got[1:] != 0).all() and got[2] == got[6]
    assert len(set(got.tolist())) == len(set(ids))
    assert member_codes(got).tolist() == [stable_code(v) if v else 0 for v in ids]


@pytest.mark.parametrize("seed", [0, 1])
def test_id_index_behaves_like_a_dict_under_insert_and_delete_churn(seed):
    rng = np.random.default_rng(seed)
    index = np.zeros((256, 2), dtype=np.int64)
    index[:, 1] = -1
    reference: dict[int, int] = {}
    # few distinct low bits, so probe chains are long and wrap around the table end
    universe = (rng.integers(1, 2**40, 300) << 8 | rng.integers(0, 256, 300)).astype(np.int64) * 3 + 251
    for step in range(300):
        if len(reference) < 100 and rng.random() < 0.6:
            h = np.unique(rng.choice(universe, 10))
            h = np.array([x for x in h.tolist() if x not in reference], dtype=np.int64)
            slots = rng.integers(0, 10_000, len(h))
            index_insert(index, h, slots)
            reference.update(zip(h.tolist(), slots.tolist()))
        elif reference:
            gone = rng.choice(np.array(list(reference), dtype=np.int64), min(7, len(reference)), replace=False)
            index_delete(index, gone)
            for h in gone.tolist():
                del reference[h]
        query = np.concatenate([universe, [0]]).astype(np.int64)
        out = np.empty(len(query), dtype=np.int64)
        missing = index_probe(query, index, out)
        want = [reference.get(h, -2) for h in universe.tolist()] + [-1]
        assert out.tolist() == want, step
        assert missing == want.count(-2)
    assert int((index[:, 0] != 0).sum()) == len(reference)


# --------------------------------------------------------------------------------------
# Semantics
# --------------------------------------------------------------------------------------
def test_first_seen_and_repeats_inside_one_batch():
    engine = FeatureEngine()
    f = engine.compute(one_batch([{"t": T0, "card_id": "a", "merchant_id": "m"},
                                  {"t": T0 + 1000, "card_id": "a", "merchant_id": "m"},
                                  {"t": T0 + 5000, "card_id": "b", "merchant_id": "m"},
                                  {"t": T0 + 9000, "card_id": "a", "merchant_id": "n"}]))
    assert f["card_first_seen"].tolist() == [1, 0, 1, 0]
    assert f["card_seconds_since_prev"].tolist() == [MAX_GAP_S, 1.0, MAX_GAP_S, 8.0]
    assert f["merchant_first_seen"].tolist() == [1, 0, 0, 1]
    assert f["card_distinct_merchants_1d"].tolist() == [0, 1, 0, 1]
    # the row's own amount is not in its history
    assert f["card_txn_count_1h"][0] == 0 and f["card_amount_sum_1d"][0] == 0
    assert f["card_txn_count_1h"][1] == pytest.approx(math.exp(-1 / 3600), rel=1e-5)
    f = engine.compute(one_batch([{"t": T0 + 20_000, "card_id": "a", "merchant_id": "m"}]))
    assert f["card_first_seen"].tolist() == [0]


def test_windows_decay_over_event_time_not_arrival():
    engine = FeatureEngine()
    engine.compute(one_batch([{"t": T0, "card_id": "a", "merchant_id": "m", "amount": 100.0}]))
    f = engine.compute(one_batch([{"t": T0 + HOUR, "card_id": "a", "merchant_id": "m"},
                                  {"t": T0 + 31 * DAY, "card_id": "a", "merchant_id": "m"}]))
    assert f["card_txn_count_1h"][0] == pytest.approx(math.exp(-1), rel=1e-5)
    assert f["card_amount_sum_1d"][0] == pytest.approx(100 * math.exp(-1 / 24), rel=1e-5)
    assert f["merchant_txn_count_1h"][0] == pytest.approx(math.exp(-1), rel=1e-5)
    assert f["card_txn_count_1h"][1] < 1e-6
    assert f["card_txn_count_1d"][1] < 1e-6
    assert f["card_distinct_merchants_1d"][1] == 0


def test_out_of_order_row_reads_latest_state_and_never_goes_negative():
    engine = FeatureEngine()
    f = engine.compute(one_batch([{"t": T0, "card_id": "a", "merchant_id": "m"},
                                  {"t": T0 + 2 * HOUR, "card_id": "a", "merchant_id": "m"},
                                  {"t": T0 + HOUR, "card_id": "a", "merchant_id": "m"}]))
    assert f["card_seconds_since_prev"][2] == 0
    assert f["card_txn_count_1h"][2] == pytest.approx(1 + math.exp(-2), rel=1e-5)


def test_labels_are_invisible_before_label_time():
    engine = FeatureEngine()
    engine.compute(one_batch([{"t": T0, "card_id": "a", "merchant_id": "m", "terminal_id": "x"}]))
    engine.apply_labels({"card": np.array(["a"], dtype=object), "merchant": np.array(["m"], dtype=object),
                         "terminal": np.array(["x"], dtype=object)},
                        np.array([T0]), np.array([T0 + 2 * DAY]), np.array([1]))
    f = engine.compute(one_batch([
        {"t": T0 + DAY, "card_id": "a", "merchant_id": "m", "terminal_id": "x"},
        {"t": T0 + 2 * DAY - 1, "card_id": "a", "merchant_id": "m", "terminal_id": "x"},
        {"t": T0 + 2 * DAY, "card_id": "a", "merchant_id": "m", "terminal_id": "x"},
        {"t": T0 + 2 * DAY + 1, "card_id": "b", "merchant_id": "m"},
    ]))
    no_fraud_1 = FRAUD_PRIOR_WEIGHT * FRAUD_PRIOR_RATE / (math.exp(-1 / 30) + FRAUD_PRIOR_WEIGHT)
    assert f["card_fraud_rate_30d"][0] == pytest.approx(no_fraud_1, rel=1e-5)
    for name in ("card_fraud_rate_30d", "merchant_fraud_rate_7d", "merchant_fraud_rate_30d",
                 "terminal_fraud_rate_7d", "terminal_fraud_rate_30d"):
        assert f[name][1] < 2 * FRAUD_PRIOR_RATE, name
        assert f[name][2] > 0.05, name  # one fraud in ~3 decayed txns + 5 prior ones
    # a new card reads the prior, not 0/0
    assert f["card_fraud_rate_30d"][3] == pytest.approx(FRAUD_PRIOR_RATE, rel=1e-5)
    # merchant m: 3 earlier txns (decayed), one fraud weighed by its age
    c = sum(math.exp(-(2 * DAY + 1 - t) / (30 * DAY)) for t in (0, DAY, 2 * DAY - 1, 2 * DAY))
    pos = math.exp(-(2 * DAY + 1) / (30 * DAY))
    want = (pos + FRAUD_PRIOR_WEIGHT * FRAUD_PRIOR_RATE) / (c + FRAUD_PRIOR_WEIGHT)
    assert f["merchant_fraud_rate_30d"][3] == pytest.approx(want, rel=1e-5)


def test_labels_come_due_even_in_a_batch_without_that_entity_column():
    engine = FeatureEngine()
    engine.compute(one_batch([{"t": T0, "card_id": "a", "merchant_id": "m", "terminal_id": "x"}]))
    engine.apply_labels({"terminal": np.array(["x"], dtype=object)}, np.array([T0]), np.array([T0 + HOUR]),
                        np.array([1]))
    engine.compute(one_batch([{"t": T0 + 2 * HOUR, "card_id": "b", "merchant_id": "m"}]))
    f = engine.compute(one_batch([{"t": T0 + 3 * HOUR, "card_id": "b", "merchant_id": "m", "terminal_id": "x"}]))
    assert f["terminal_fraud_rate_7d"][0] > 0.1


def test_negative_labels_change_nothing_and_unknown_entities_are_refused():
    a, b = FeatureEngine(), FeatureEngine()
    rows = [{"t": T0, "card_id": "a", "merchant_id": "m"}]
    a.compute(one_batch(rows))
    b.compute(one_batch(rows))
    a.apply_labels({"card": np.array(["a"], dtype=object)}, np.array([T0]), np.array([T0 + 1]), np.array([0]))
    later = [{"t": T0 + HOUR, "card_id": "a", "merchant_id": "m"}]
    assert a.compute(one_batch(later))["card_fraud_rate_30d"][0] == b.compute(one_batch(later))["card_fraud_rate_30d"][0]
    with pytest.raises(ValueError, match="device"):
        a.apply_labels({"device": np.array(["d"], dtype=object)}, np.array([T0]), np.array([T0]), np.array([1]))


def test_geo_speed_and_new_country_and_device():
    engine = FeatureEngine()
    f = engine.compute(one_batch([
        {"t": T0, "card_id": "a", "merchant_id": "m", "lat": 48.8566, "lon": 2.3522, "country": "FR", "device_id": "d1"},
        {"t": T0 + HOUR, "card_id": "a", "merchant_id": "m", "country": "FR", "device_id": "d1"},  # no location
        {"t": T0 + 2 * HOUR, "card_id": "a", "merchant_id": "m", "lat": 40.7128, "lon": -74.0060, "country": "US",
         "device_id": "d2"},
    ]))
    assert f["card_km_from_prev"][1] == 0
    assert f["card_km_from_prev"][2] == pytest.approx(5837, rel=0.01)  # Paris - New York
    assert f["card_speed_kmh_from_prev"][2] == pytest.approx(5837 / 2, rel=0.01)
    assert f["card_new_country"].tolist() == [0, 0, 1]
    assert f["card_new_device"].tolist() == [0, 0, 1]
    assert f["device_distinct_cards_1d"].tolist() == [0, 1, 0]


# --------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------
def test_outputs_are_float32_finite_and_batch_length():
    engine = FeatureEngine()
    rng = np.random.default_rng(5)
    batch = random_batch(rng, 300, T0)
    batch.amount[:3] = [0.0, 10_000_000.0, 0.01]
    batch.event_time_ms[5] = batch.event_time_ms[4]  # same millisecond, same card possible
    for b in (batch, random_batch(rng, 300, T0 + 40 * DAY), random_batch(rng, 0, T0 + 41 * DAY)):
        f = engine.compute(b)
        assert tuple(f) == FEATURE_NAMES
        for name, col in f.items():
            assert col.dtype == np.float32 and col.shape == (b.n,), name
            assert np.isfinite(col).all(), name


def test_absent_entities_read_zero():
    engine = FeatureEngine()
    f = engine.compute(one_batch([{"t": T0, "card_id": "a", "merchant_id": "m", "terminal_id": "x"},
                                  {"t": T0 + 1, "card_id": "a", "merchant_id": "m"}]))
    assert f["terminal_txn_count_1d"][1] == 0 and f["terminal_fraud_rate_7d"][1] == 0
    assert f["terminal_fraud_rate_7d"][0] > 0
    assert f["device_distinct_cards_1d"].tolist() == [0, 0]
    assert engine.tracked_entities == {"card": 1, "merchant": 1, "terminal": 1, "device": 0, "ip": 0,
                                       "account": 0, "customer": 0}


# --------------------------------------------------------------------------------------
# State management
# --------------------------------------------------------------------------------------
def _state_by_id(engine: FeatureEngine) -> dict:
    out = {}
    for name, table in engine.tables.items():
        for slot in np.flatnonzero(table.live):
            out[(name, int(table.hash[slot]))] = (int(table.partition[slot]),
                                                  tuple(state[slot].tobytes() for state in table.states.values()))
    return out


def _fed_engine(seed: int = 7) -> tuple[FeatureEngine, np.random.Generator]:
    rng = np.random.default_rng(seed)
    engine = FeatureEngine()
    t = T0
    for _ in range(3):
        batch = random_batch(rng, 300, t)
        t = int(batch.event_time_ms.max())
        engine.compute(batch)
    return engine, rng


def test_snapshot_restore_round_trip_gives_equal_state_and_equal_features():
    engine, rng = _fed_engine()
    fresh = FeatureEngine()
    fresh.restore(engine.snapshot())
    assert _state_by_id(fresh) == _state_by_id(engine)
    assert fresh.tracked_entities == engine.tracked_entities
    nxt = random_batch(rng, 200, T0 + 10 * DAY)
    a, b = engine.compute(nxt), fresh.compute(nxt)
    for name in FEATURE_NAMES:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_snapshot_partition_filter_and_drop_partitions():
    engine, _ = _fed_engine()
    full = _state_by_id(engine)
    on_1 = {k: v for k, v in full.items() if v[0] == 1}
    assert 0 < len(on_1) < len(full)
    fresh = FeatureEngine()
    fresh.restore(engine.snapshot({1}))
    assert _state_by_id(fresh) == on_1
    engine.drop_partitions({1})
    assert _state_by_id(engine) == {k: v for k, v in full.items() if v[0] != 1}
    # merging the snapshot back gives the full state again
    engine.restore(fresh.snapshot())
    assert _state_by_id(engine) == full


def test_restore_refuses_a_snapshot_of_another_layout():
    engine, _ = _fed_engine()
    blob = engine.snapshot()
    import io
    data = dict(np.load(io.BytesIO(blob), allow_pickle=False))
    data["card.geo_velocity"] = np.ascontiguousarray(data["card.geo_velocity"][:, :2])
    buf = io.BytesIO()
    np.savez(buf, **data)
    with pytest.raises(ValueError, match="geo_velocity"):
        FeatureEngine().restore(buf.getvalue())


def test_eviction_keeps_the_bound_and_drops_least_recently_seen():
    engine = FeatureEngine(max_entities=64)
    t = T0
    for b in range(30):
        rows = [{"t": t + i, "card_id": f"c{b}_{i}", "merchant_id": "m"} for i in range(20)]
        rows.append({"t": t + 30, "card_id": "regular", "merchant_id": "m"})
        engine.compute(one_batch(rows))
        t += HOUR
        assert engine.tracked_entities["card"] <= 64
    assert engine.tables["card"].evicted > 0
    f = engine.compute(one_batch([{"t": t, "card_id": "regular", "merchant_id": "m"},
                                  {"t": t + 1, "card_id": "c0_0", "merchant_id": "m"},
                                  {"t": t + 2, "card_id": "c29_19", "merchant_id": "m"}]))
    assert f["card_first_seen"].tolist() == [0, 1, 0]
    assert engine.tracked_entities["card"] <= 64


def test_eviction_resets_the_slot_it_reuses():
    engine = FeatureEngine(max_entities=2)
    engine.compute(one_batch([{"t": T0, "card_id": "a", "merchant_id": "m", "amount": 500.0}]))
    engine.compute(one_batch([{"t": T0 + 1, "card_id": "b", "merchant_id": "m"}]))
    engine.compute(one_batch([{"t": T0 + 2, "card_id": "c", "merchant_id": "m"}]))  # evicts a
    f = engine.compute(one_batch([{"t": T0 + 3, "card_id": "d", "merchant_id": "m"}]))  # reuses a slot
    assert f["card_first_seen"][0] == 1 and f["card_amount_sum_1d"][0] == 0 and f["card_amount_mean_30d"][0] == 0
    known = engine.tables["card"].lookup(np.array(["a", "b", "c", "d"], dtype=object)) >= 0
    assert known.tolist() == [False, False, True, True]


def test_state_bytes_counts_state_arrays_and_index():
    engine = FeatureEngine(max_entities=100_000)
    empty = engine.state_bytes()
    engine.compute(one_batch([{"t": T0 + i, "card_id": f"card{i}", "merchant_id": "m"} for i in range(3000)]))
    card = engine.tables["card"]
    assert engine.state_bytes() > empty
    assert card.nbytes() >= 3000 * card.row_bytes()
    assert card.index.nbytes >= 2 * 3000 * 16  # index kept at most half full
