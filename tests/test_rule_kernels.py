"""The compiled rule kernel: parity with the plain-Python reference evaluator on random rule
trees and the default rule set, and the kernel cache."""

from __future__ import annotations

import os

import numpy as np
import pytest

from riskstream.rules.compiler import compile_rule_set, reference_hits
from riskstream.rules.conditions import All, AnyOf, Arith, Between, Col, Compare, InList, Not, Num
from riskstream.rules.language import default_rule_set_text, validate_rule_set
from tests.test_rules import BATCH, COLUMNS, NAN, TWO_RULES, rule_set_yaml

# ---------------------------------------------------------------------------------------
# Parity: kernel vs plain-Python reference
# ---------------------------------------------------------------------------------------
FEATURES = ["f0", "f1", "f2", "f3"]
GRID = np.array([-1.0, 0.0, 0.5, 1.0, 2.0, 3.0, NAN])


def random_batch(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    cols = {}
    for j, name in enumerate(FEATURES):
        # Half the values on a small grid so that ==, between bounds and x/0 all happen.
        values = np.where(rng.random(n) < 0.5, GRID[rng.integers(0, len(GRID), n)], rng.normal(1, 2, n))
        cols[name] = values.astype(np.float32 if j % 2 else np.float64)
    cols["country"] = np.array(["KP", "US", "FR", "", "IR"], dtype=object)[rng.integers(0, 5, n)]
    return cols


def random_expr(rng: np.random.Generator, depth: int):
    if depth == 0 or rng.random() < 0.5:
        if rng.random() < 0.6:
            return Col(FEATURES[rng.integers(len(FEATURES))])
        return Num(float(GRID[rng.integers(0, len(GRID) - 1)]))
    return Arith(["+", "-", "*", "/"][rng.integers(4)], random_expr(rng, depth - 1), random_expr(rng, depth - 1))


def random_condition(rng: np.random.Generator, depth: int):
    kind = rng.integers(0, 7 if depth else 3)
    if kind == 0:
        return Compare([">", ">=", "<", "<=", "==", "!="][rng.integers(6)], random_expr(rng, 2), random_expr(rng, 2))
    if kind == 1:
        return Between(random_expr(rng, 1), random_expr(rng, 1), random_expr(rng, 1))
    if kind == 2:
        if rng.random() < 0.5:
            return InList("country", list_name="deny", negate=bool(rng.random() < 0.5))
        return InList("country", literal="US", negate=bool(rng.random() < 0.5))
    if kind == 3:
        return Not(random_condition(rng, depth - 1))
    children = tuple(random_condition(rng, depth - 1) for _ in range(rng.integers(2, 4)))
    return All(children) if kind in (4, 5) else AnyOf(children)


def random_rule_set_text(rng: np.random.Generator, n_rules: int) -> str:
    rules = "".join(
        f"  - id: r{i}\n    version: 1\n    description: random\n    action: review\n"
        f"    reason: {{code: R, text: x}}\n    when: '{random_condition(rng, 3).to_text()}'\n"
        for i in range(n_rules))
    return f'version: "rand"\nlists: {{deny: [KP, IR]}}\nrules:\n{rules}'


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_parity_on_random_rule_trees(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Random trees go through to_text() and back through the parser, so this covers the
    # parser's precedence and the printer as well as the kernel.
    rs = validate_rule_set(random_rule_set_text(rng, 12), "random.yaml")
    dtypes = {name: (np.float32 if j % 2 else np.float64) for j, name in enumerate(FEATURES)} | {"country": object}
    batch = random_batch(rng, 400)
    reference = reference_hits(rs.rules, rs.lists, batch)
    assert 0 < reference.mean() < 1  # the random rules do hit, and not everything
    for ordered in (True, False):
        kernel = compile_rule_set(rs, dtypes, order_by_cost=ordered).evaluate(batch).hits
        assert (kernel == reference).all(), np.argwhere(kernel != reference)[:5]


def test_parity_on_the_default_rule_set() -> None:
    from riskstream.bench.rules_bench import synthetic_batch

    rs = validate_rule_set(default_rule_set_text(), "default.yaml")
    batch = synthetic_batch(3000, seed=11)
    rng = np.random.default_rng(5)
    # Push values across every threshold, and knock holes (NaN) in, so rules really hit.
    for name in ("card_txn_count_1h", "card_distinct_merchants_1d", "card_amount_ratio_30d",
                 "card_speed_kmh_from_prev", "terminal_fraud_rate_7d", "card_amount_sum_1d", "score", "amount"):
        scale = {"card_txn_count_1h": 20, "card_distinct_merchants_1d": 6, "card_amount_ratio_30d": 12,
                 "card_speed_kmh_from_prev": 1500, "terminal_fraud_rate_7d": 0.4, "card_amount_sum_1d": 6000,
                 "score": 1, "amount": 1000}[name]
        values = rng.random(3000) * scale
        values[rng.random(3000) < 0.05] = NAN
        batch[name] = values
    for name in ("card_first_seen", "card_new_device", "card_new_country", "is_night"):
        batch[name] = (rng.random(3000) < 0.5).astype(np.float64)
    batch["card_seconds_since_prev"] = rng.random(3000) * 100000
    batch["card_id"] = batch["card_id"].copy()
    batch["card_id"][:20] = "tok_00000000000000000000aa01"  # on the allow list
    batch["card_id"][20:40] = "tok_000000000000000000000001"  # on the block list
    batch["device_id"] = batch["device_id"].copy()
    batch["device_id"][40:60] = "dev-farm-0042"  # on the device block list
    columns = {c: (np.float32 if c == "card_amount_ratio_30d" else batch[c].dtype) for c in batch}
    batch["card_amount_ratio_30d"] = batch["card_amount_ratio_30d"].astype(np.float32)
    compiled = compile_rule_set(rs, columns)
    out = compiled.evaluate(batch)
    reference = compiled.evaluate_reference(batch)
    assert (out.hits == reference.hits).all()
    assert out.hits.any(axis=1).all()  # every rule fires somewhere, so parity means something


def test_a_rule_set_compiled_before_loads_its_kernel_from_the_cache_and_decides_the_same(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    rs = validate_rule_set(TWO_RULES.format(set_mode=""), "s.yaml")
    first = compile_rule_set(rs, COLUMNS)
    again = compile_rule_set(rs, COLUMNS)  # a new dispatcher: its first call finds the cache
    assert not first._kernel.stats.cache_hits and sum(again._kernel.stats.cache_hits.values()) >= 1
    assert list((tmp_path / "riskstream" / "rules").glob("kernel_*.py"))
    np.testing.assert_array_equal(again.evaluate(BATCH).hits, first.evaluate(BATCH).hits)
    np.testing.assert_array_equal(again.evaluate(BATCH).hits, again.evaluate_reference(BATCH).hits)


def test_the_kernel_cache_keeps_the_rule_sets_used_last(tmp_path, monkeypatch):
    from riskstream.rules import kernel_cache

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(kernel_cache, "KEPT_KERNELS", 2)
    # Kernels are keyed by the rules' shape (thresholds are arguments): three shapes.
    shapes = ("amount > 1", "amount > 1 and amount < 5", "amount > 1 or amount < -5")
    rule_sets = [validate_rule_set(rule_set_yaml(when), f"r{k}.yaml") for k, when in enumerate(shapes)]
    kernels = tmp_path / "riskstream" / "rules"
    compile_rule_set(rule_sets[0], COLUMNS).evaluate(BATCH)
    (first,) = kernels.glob("kernel_*.py")
    compile_rule_set(rule_sets[1], COLUMNS).evaluate(BATCH)
    os.utime(first, (1, 1))  # long unused ...
    compile_rule_set(rule_sets[0], COLUMNS).evaluate(BATCH)  # ... until compiled again: touched
    compile_rule_set(rule_sets[2], COLUMNS).evaluate(BATCH)  # a third: the one unused longest goes
    kept = {p.stem for p in kernels.glob("kernel_*.py")}
    assert len(kept) == 2 and first.stem in kept
    assert {p.name.split(".")[0] for p in (kernels / "__pycache__").glob("*.nbi")} <= kept
