"""Micro-benchmark of FeatureEngine.compute: ns per transaction by batch size and card count,
bytes per tracked card, and each registered kernel alone.

    .venv/bin/python -m riskstream.bench.features_bench            # 1M txns, 100k and 1M cards
    .venv/bin/python -m riskstream.bench.features_bench --txns 200000 --cards 100000

Numba compilation (or the cache load, when ``__pycache__`` holds the kernels) is timed on a
separate warm-up engine and excluded from the per-transaction figures.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from riskstream.detectors.features import PLAN, FeatureEngine
from riskstream.detectors.kernel_registry import KERNELS, StepInput, fresh_state
from riskstream.schemas.transactions import TRANSACTION_OPTIONAL, TransactionBatch

T0 = 1_700_000_000_000


def synthetic_transactions(n: int, n_cards: int, seed: int = 0, span_days: float = 7.0) -> TransactionBatch:
    """Zipf-ish card activity, every optional entity present on most rows."""
    rng = np.random.default_rng(seed)

    def pool(prefix: str, size: int) -> np.ndarray:
        return np.array([f"{prefix}{i:012x}" for i in range(size)], dtype=object)

    def pick(values: np.ndarray, absent: float, skew: float = 1.2) -> np.ndarray:
        idx = np.minimum((rng.pareto(skew, n) * len(values) / 20).astype(np.int64), len(values) - 1)
        out = values[rng.permutation(len(values))[idx]] if skew else values[rng.integers(0, len(values), n)]
        if absent:
            out = out.copy()
            out[rng.random(n) < absent] = ""
        return out

    cards = pool("tok_", n_cards)
    card = cards[rng.integers(0, n_cards, n)]  # uniform: every card shows up, as in the worst case for memory
    t = T0 + np.sort(rng.integers(0, int(span_days * 86_400_000), n))
    t += (rng.random(n) < 0.05) * rng.integers(-60_000, 0, n)  # a little disorder
    lat = rng.uniform(-60, 60, n)
    lon = rng.uniform(-170, 170, n)
    lat[rng.random(n) < 0.3] = np.nan
    optional = {k: np.full(n, "", dtype=object) for k in TRANSACTION_OPTIONAL}
    optional["terminal_id"] = pick(pool("term", 200_000), 0.2)
    optional["device_id"] = pick(pool("dev", max(n_cards // 2, 1)), 0.4)
    optional["ip"] = pick(pool("ip", 300_000), 0.4)
    optional["account_id"] = pick(pool("acct", max(n_cards // 2, 1)), 0.5)
    optional["country"] = pick(np.array(["FR", "DE", "US", "GB", "BR", "JP", "NG", "IN"], dtype=object), 0.1)
    return TransactionBatch(
        transaction_id=np.array([f"t{i}" for i in range(n)], dtype=object),
        event_time_ms=t.astype(np.int64),
        card_id=card,
        merchant_id=pick(pool("m", 50_000), 0.0),
        amount=np.round(rng.lognormal(3.5, 1.2, n), 2),
        lat=lat,
        lon=lon,
        optional=optional,
        partition=(rng.integers(0, 12, n)).astype(np.int32),
        offset=np.arange(n, dtype=np.int64),
    )


def batches(txns: TransactionBatch, size: int):
    for start in range(0, txns.n, size):
        yield txns.take(slice(start, start + size))


def warm_up() -> float:
    """Seconds for the first compute of a fresh process: numba compile or cache load."""
    tiny = synthetic_transactions(200, 100, seed=99)
    start = time.perf_counter()
    FeatureEngine(max_entities=1000).compute(tiny)
    return time.perf_counter() - start


def time_engine(txns: TransactionBatch, batch_size: int, max_entities: int) -> tuple[float, float, FeatureEngine]:
    """Wall and CPU ns per transaction of one pass over txns with a fresh engine (CPU time is
    the steadier figure on a shared machine: compute is single-threaded)."""
    engine = FeatureEngine(max_entities=max_entities)
    parts = list(batches(txns, batch_size))
    wall, cpu = time.perf_counter(), time.process_time()
    for b in parts:
        engine.compute(b)
    return ((time.perf_counter() - wall) / txns.n * 1e9, (time.process_time() - cpu) / txns.n * 1e9, engine)


def time_kernels(n: int = 200_000, n_slots: int = 1_000_000, batch_size: int = 5_000) -> dict[str, float]:
    """Each plan step's kernel alone on random slots of a large state (cache misses included)."""
    rng = np.random.default_rng(1)
    slots = rng.integers(0, n_slots, n).astype(np.int64)
    t_ms = T0 + np.sort(rng.integers(0, 86_400_000, n))
    amount = rng.lognormal(3, 1, n)
    codes = rng.integers(1, 1000, n).astype(np.int32)
    lat, lon = rng.uniform(-60, 60, n), rng.uniform(-170, 170, n)
    no_labels = np.empty(0, dtype=np.int64)
    results = {}
    for step in PLAN:
        name = f"{step.entity}.{step.state_key}"
        spec = KERNELS[step.kernel]
        state = fresh_state(spec, step.params, n_slots)
        out = np.zeros((len(spec.outputs(step.params)), batch_size), dtype=np.float32)
        start = time.perf_counter()
        for a in range(0, n, batch_size):
            sl = slice(a, a + batch_size)
            x = StepInput(slots[sl], t_ms[sl], amount[sl], member_codes=codes[sl], lat=lat[sl], lon=lon[sl],
                          label_keys=no_labels, label_event_ms=no_labels, label_time_ms=no_labels)
            spec.run(step.params, x, state, out[:, : len(x.keys)])
        results[name] = (time.perf_counter() - start) / n * 1e9
    return results


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--txns", type=int, default=1_000_000)
    ap.add_argument("--cards", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1_000, 5_000, 10_000])
    ap.add_argument("--max-entities", type=int, default=2_000_000)
    args = ap.parse_args(argv)

    first = warm_up()
    print(f"first compute in a fresh process (numba compile or cache load): {first:.2f} s")
    for n_cards in args.cards:
        t = time.perf_counter()
        txns = synthetic_transactions(args.txns, n_cards)
        print(f"\n{args.txns:,} transactions, {n_cards:,} cards (generated in {time.perf_counter() - t:.1f} s)")
        engine = None
        for size in args.batch_sizes:
            wall, cpu, engine = time_engine(txns, size, args.max_entities)
            print(f"  batch {size:>6,}: {cpu:6.0f} ns/transaction CPU, {wall:6.0f} wall "
                  f"({1e9 / cpu:,.0f} transactions/s per core)")
        card = engine.tables["card"]
        index_per_card = card.index.nbytes / len(card)
        print(f"  tracked: {engine.tracked_entities}")
        print(f"  bytes per tracked card: {card.row_bytes()} per slot + {index_per_card:.0f} id index "
              f"= {card.row_bytes() + index_per_card:.0f}; all cards incl. doubling slack: "
              f"{card.nbytes() / len(card):.0f}; engine state_bytes {engine.state_bytes() / 2**20:.0f} MiB")
    print("\nkernels alone (1M-slot state, random slots, batch 5,000), ns/transaction:")
    for name, ns in time_kernels().items():
        print(f"  {name:<40} {ns:6.1f}")


if __name__ == "__main__":
    main()
