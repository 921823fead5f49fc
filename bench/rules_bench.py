"""Rule evaluation throughput: the built-in rule set over 1M transactions.

    .venv/bin/python -m riskstream.bench.rules_bench [--rows 1000000]

Prints compile time, then transactions/s per core (one thread) at 10k and 100k rows per
call, split into list-mask work (Python set lookups) and the jitted kernel, and the
plain-Python reference on a small sample for scale.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from riskstream.rules.compiler import compile_rule_set
from riskstream.rules.language import default_rule_set_text, validate_rule_set
from riskstream.rules.model import KNOWN_NUMERIC_COLUMNS, STRING_COLUMNS


def synthetic_batch(n: int, seed: int = 7) -> dict[str, np.ndarray]:
    """Feature columns with plausible ranges, so rules hit at realistic (low) rates."""
    rng = np.random.default_rng(seed)
    cols: dict[str, np.ndarray] = {
        "amount": rng.lognormal(3.5, 1.2, n),
        "card_txn_count_1h": rng.poisson(1.5, n).astype(np.float64),
        "card_amount_sum_1d": rng.lognormal(5, 1.0, n),
        "card_amount_zscore_30d": rng.normal(0, 1.5, n),
        "card_amount_ratio_30d": rng.lognormal(0, 0.8, n),
        "card_amount_mean_30d": rng.lognormal(3.5, 0.8, n),
        "card_seconds_since_prev": rng.exponential(20000, n),
        "card_first_seen": (rng.random(n) < 0.02).astype(np.float64),
        "card_distinct_merchants_1d": rng.poisson(1.2, n).astype(np.float64),
        "card_new_country": (rng.random(n) < 0.03).astype(np.float64),
        "card_new_device": (rng.random(n) < 0.05).astype(np.float64),
        "card_speed_kmh_from_prev": rng.exponential(40, n),
        "merchant_txn_count_1h": rng.poisson(30, n).astype(np.float64),
        "merchant_fraud_rate_7d": rng.beta(1, 200, n),
        "terminal_fraud_rate_7d": rng.beta(1, 100, n),
        "hour_of_day": rng.integers(0, 24, n).astype(np.float64),
        "is_weekend": (rng.random(n) < 2 / 7).astype(np.float64),
        "score": rng.beta(1, 30, n),
    }
    cols["is_night"] = (cols["hour_of_day"] < 6).astype(np.float64)
    assert set(cols) == set(KNOWN_NUMERIC_COLUMNS)
    pool = {
        "country": np.array(["US", "FR", "DE", "GB", "KP", "BR", "IN", ""], dtype=object),
        "card_id": np.array([f"tok_{i:024x}" for i in range(5000)], dtype=object),
        "device_id": np.array([f"dev-{i:08d}" for i in range(2000)] + ["dev-farm-0042"], dtype=object),
        "ip": np.array([f"10.0.{i // 256}.{i % 256}" for i in range(3000)], dtype=object),
        "terminal_id": np.array([f"term-{i}" for i in range(800)] + [""], dtype=object),
    }
    for name in STRING_COLUMNS:
        values = pool.get(name, np.array(["a", "b", "c", ""], dtype=object))
        cols[name] = values[rng.integers(0, len(values), n)]
    return cols


def run(rows: int, per_call: int, compiled, cols) -> tuple[float, float, float]:
    """(transactions/s end to end, seconds in masks, seconds in kernel)."""
    nums = [np.ascontiguousarray(cols[c], dtype=compiled.column_dtypes[c]) for c in compiled.numeric_columns]
    t_mask = t_kernel = 0.0
    start = time.perf_counter()
    for lo in range(0, rows, per_call):
        chunk = {k: v[lo:lo + per_call] for k, v in cols.items()}
        compiled.evaluate(chunk)
    total = time.perf_counter() - start
    # The split, measured separately so that the end-to-end figure carries no timer overhead.
    for lo in range(0, rows, per_call):
        chunk = {k: v[lo:lo + per_call] for k, v in cols.items()}
        t0 = time.perf_counter()
        masks = compiled.list_masks(chunk, len(chunk["amount"]))
        t1 = time.perf_counter()
        out = np.empty((len(compiled.rules), len(chunk["amount"])), dtype=bool)
        compiled._kernel(*(a[lo:lo + per_call] for a in nums), *masks, compiled.consts, out)
        t_mask += t1 - t0
        t_kernel += time.perf_counter() - t1
    return rows / total, t_mask, t_kernel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args(argv)

    rule_set = validate_rule_set(default_rule_set_text(), "default.yaml")
    t0 = time.perf_counter()
    import numba  # noqa: F401 - import cost reported apart from the compile itself

    t_import = time.perf_counter() - t0
    compiled = compile_rule_set(rule_set, sorted(KNOWN_NUMERIC_COLUMNS | STRING_COLUMNS))
    recompiled = compile_rule_set(rule_set, sorted(KNOWN_NUMERIC_COLUMNS | STRING_COLUMNS))
    print(f"rule set {compiled.version}: {len(compiled.rules)} rules, {len(compiled.masks)} list masks")
    print(f"numba import {t_import:.2f} s; compile {compiled.compile_seconds:.2f} s first, "
          f"{recompiled.compile_seconds:.2f} s on a hot reload")

    cols = synthetic_batch(args.rows)
    for per_call in (10_000, 100_000):
        tps, t_mask, t_kernel = run(args.rows, per_call, compiled, cols)
        print(f"{per_call:>7,} rows/call: {tps:>12,.0f} transactions/s per core "
              f"(list masks {1e9 * t_mask / args.rows:.0f} ns/txn, kernel {1e9 * t_kernel / args.rows:.0f} ns/txn)")

    sample = {k: v[:5000] for k, v in cols.items()}
    t0 = time.perf_counter()
    reference = compiled.evaluate_reference(sample)
    t_ref = time.perf_counter() - t0
    assert (reference.hits == compiled.evaluate(sample).hits).all(), "kernel and reference disagree"
    print(f"plain-Python reference: {5000 / t_ref:,.0f} transactions/s (same hits as the kernel)")
    hit_rate = compiled.evaluate(cols).hits.mean(axis=1)
    print("hit rate per rule: " + ", ".join(f"{r} {100 * h:.2f}%" for r, h in zip(compiled.rule_ids, hit_rate)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
