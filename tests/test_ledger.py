"""Credit lines: the Redis script against the in-memory ledger, concurrent authorisations from
several workers that never take available credit below zero, repeats after a restart, and an
exact reconciliation from the events."""

from __future__ import annotations

import random
import threading

import orjson
import pytest
from pydantic import SecretStr

from riskstream.settings import Settings
from riskstream.streams.driver import Driver
from riskstream.streams.ledger import LedgerOp, LineState, LocalLedger, RedisLedger
from riskstream.streams.worker import TransactionPath

T0 = 1_700_000_000_000


def _random_ops(seed: int, n: int = 400) -> list[LedgerOp]:
    rng = random.Random(seed)
    ops = [LedgerOp("set_limit", "L1", "open", 50_000), LedgerOp("set_limit", "L2", "open", 20_000)]
    auths: list[str] = []
    for k in range(n):
        line = rng.choice(["L1", "L2", "L3"])  # L3 has no line
        kind = rng.random()
        if kind < 0.6 or not auths:
            auths.append(f"t{k}")
            ops.append(LedgerOp("auth", line, f"t{k}", rng.randint(100, 9_000)))
        elif kind < 0.72:
            ops.append(LedgerOp("settle", line, f"s{k}", rng.randint(100, 9_000), rng.choice(auths)))
        elif kind < 0.75:  # read before its authorisation
            ops.append(LedgerOp("settle", line, f"s{k}", rng.randint(100, 9_000), f"t{k + 1}"))
        elif kind < 0.85:
            ops.append(LedgerOp("reverse", line, f"r{k}", 0, rng.choice(auths)))
        elif kind < 0.95:
            ops.append(LedgerOp("repay", line, f"p{k}", rng.randint(100, 20_000)))
        else:
            ops.append(ops[rng.randrange(2, len(ops))])  # a repeat: same answer, applied once
    return ops


@pytest.mark.integration
def test_the_redis_script_answers_exactly_as_the_in_memory_ledger(stack):
    from riskstream.sinks.kafka import connect_redis

    redis = RedisLedger(connect_redis(stack))
    local = LocalLedger()
    ops = _random_ops(3)
    for start in range(0, len(ops), 37):
        assert redis.apply(ops[start:start + 37]) == local.apply(ops[start:start + 37])
    assert redis.state(["L1", "L2", "L3"]) == {line: LineState("ok", *local.lines[line]) for line in ("L1", "L2")}


@pytest.mark.integration
def test_concurrent_authorisations_from_four_workers_never_overdraw_and_repeats_change_nothing(stack):
    from riskstream.sinks.kafka import connect_redis

    limit = 100_000
    RedisLedger(connect_redis(stack)).apply([LedgerOp("set_limit", "shared", "open", limit)])
    batches = {w: [[LedgerOp("auth", "shared", f"w{w}-{b}-{k}", random.Random(w * 1000 + b * 10 + k).randint(50, 900))
                    for k in range(10)] for b in range(30)] for w in range(4)}
    answers: dict[int, list] = {}

    def worker(w: int) -> None:  # each its own connection, like a worker process on other partitions
        ledger = RedisLedger(connect_redis(stack))
        answers[w] = [ledger.apply(batch) for batch in batches[w]]

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    states = [st for w in answers for batch in answers[w] for st in batch]
    assert len(states) == 4 * 30 * 10
    assert all(st.available >= 0 for st in states)
    accepted = sum(op.amount for w in batches for batch, got in zip(batches[w], answers[w])
                   for op, st in zip(batch, got) if st.status == "ok")
    refused = sum(st.status == "over" for st in states)
    final = RedisLedger(connect_redis(stack)).state(["shared"])["shared"]
    assert refused > 0 and final.reserved == accepted <= limit  # demand was ~2.9x the limit
    # A restarted worker repeats its uncommitted batches: the same answers, nothing reserved twice.
    again = RedisLedger(connect_redis(stack))
    assert [[st.status for st in got] for got in (again.apply(b) for b in batches[2])] == \
        [[st.status for st in got] for got in answers[2]]
    assert again.state(["shared"])["shared"].reserved == accepted
    # Reconciliation: the line recomputed from its events (the limit and the accepted holds).
    replayed = LocalLedger()
    replayed.apply([LedgerOp("set_limit", "shared", "open", limit)])
    replayed.apply([op for w in batches for batch, got in zip(batches[w], answers[w])
                    for op, st in zip(batch, got) if st.status == "ok"])
    assert tuple(replayed.lines["shared"]) == (final.limit, final.balance, final.reserved)


def test_an_approved_loan_opens_a_line_the_cards_draw_on_and_account_events_settle_it(tmp_path):
    driver = Driver(Settings(data_dir=tmp_path / "rs", pan_key=SecretStr("k" * 32)), with_models=False)
    out = driver.process("loan_applications", [orjson.dumps({
        "application_id": "a1", "event_time": T0, "customer_id": "c1", "amount": 500, "income": 60_000,
        "term_months": 36, "existing_debt": 6_000})])
    assert out.decisions[0]["decision"] == "approve"
    assert out.rows["account_events"][0] | {} == {
        "event_id": "application:a1", "event_time": T0, "account_id": "c1", "kind": "limit_change", "amount": 500.0,
        "auth_id": "", "source": "loan application a1", "status": "ok", "limit_after": 500.0, "balance_after": 0.0,
        "reserved_after": 0.0}
    tx = [orjson.dumps({"transaction_id": f"t{i}", "event_time": T0 + 1000 + i, "card_id": f"card{i % 2}",
                        "customer_id": "c1", "merchant_id": "m1", "amount": 120.0}) for i in range(5)]
    tx.append(orjson.dumps({"transaction_id": "other", "event_time": T0 + 2000, "card_id": "x", "customer_id": "c9",
                            "merchant_id": "m1", "amount": 9_000.0}))
    scored = driver.process("transactions", tx).scored
    assert list(scored.decision) == ["approve", "approve", "approve", "review", "decline", "approve"]
    assert scored.reasons[4][0] == "OVER_LIMIT: amount 120.00 exceeds the available credit 20.00 of line c1 (limit 500.00)"
    assert scored.reasons[3][0].startswith("NEAR_LIMIT: line c1 is 96% used")
    assert [a["kind"] for a in scored.alerts] == ["credit_near_limit", "credit_over_limit"]
    assert [(c["entity_type"], c["action"], c["max_amount"]) for c in scored.limits] == [("credit_line", "cap_amount", 20.0)]
    rows = driver.process("account_events", [
        orjson.dumps({"event_id": "e1", "event_time": T0 + 5000, "account_id": "c1", "kind": "settlement",
                      "amount": 110.0, "auth_id": "t0"}),
        orjson.dumps({"event_id": "e2", "event_time": T0 + 6000, "account_id": "c1", "kind": "reversal",
                      "amount": 0, "auth_id": "t1"}),
        orjson.dumps({"event_id": "e3", "event_time": T0 + 7000, "account_id": "c1", "kind": "repayment", "amount": 50}),
        orjson.dumps({"event_id": "e4", "event_time": T0 + 8000, "account_id": "c1", "kind": "settlement", "amount": 1}),
    ])
    assert [(r["balance_after"], r["reserved_after"]) for r in rows.rows["account_events"]] == [
        (110.0, 360.0), (110.0, 240.0), (60.0, 240.0)]
    assert [d.error for d in rows.dead] == ["missing required field 'auth_id'"]
    # A settlement read before its authorisation: the authorisation then holds nothing.
    driver.process("account_events", [orjson.dumps({"event_id": "e5", "event_time": T0 + 9000, "account_id": "c1",
                                                    "kind": "settlement", "amount": 30.0, "auth_id": "late"})])
    driver.process("transactions", [orjson.dumps({"transaction_id": "late", "event_time": T0 + 8000, "card_id": "card0",
                                                  "customer_id": "c1", "merchant_id": "m1", "amount": 30.0})])
    assert driver.ledger.lines["c1"] == [50_000, 9_000, 24_000]


def test_the_worker_reads_every_registered_stream():
    from riskstream.schemas.registry import STREAMS

    assert sorted(TransactionPath.ORDER) == sorted(STREAMS)


@pytest.mark.integration
@pytest.mark.both_brokers
def test_two_workers_and_a_killed_one_never_overdraw_a_line_and_it_reconciles_with_the_decisions(stack, worker_factory):
    """One customer's two cards sit on different partitions, read by two workers; one worker is
    killed mid-stream and started again, so it repeats what it had not committed. The line in
    Redis never goes below zero and holds exactly what the stored decisions approved."""
    import signal
    import time

    import redis as redis_lib

    from tests.conftest import produce, query, wait_for

    now_ms = int(time.time() * 1000)
    r = redis_lib.Redis.from_url(stack.redis_url.get_secret_value())
    produce(stack, "account_events", [(b"shared", orjson.dumps({
        "event_id": "open", "event_time": now_ms - 600_000, "account_id": "shared", "kind": "limit_change",
        "amount": 5_000.0}))])
    first, second = worker_factory(), worker_factory()
    wait_for(lambda: r.hget("rs:credit:shared", "limit"), 90, "the line opened", first)

    def burst(start: int, n: int) -> None:  # cards alternate: keys land on different partitions
        produce(stack, "transactions", [(f"card-{k % 2}".encode(), orjson.dumps({
            "transaction_id": f"cl-{k}", "event_time": now_ms - 300_000 + k, "card_id": f"card-{k % 2}",
            "customer_id": "shared", "merchant_id": "m-1", "amount": 40.0 + k % 7})) for k in range(start, start + n)])

    burst(0, 100)
    first.stop(signal.SIGKILL)
    burst(100, 100)
    worker_factory()  # the killed one, started again
    decided = wait_for(lambda: query(stack, "SELECT count() AS n FROM decisions FINAL WHERE event_id LIKE 'cl-%'"),
                       120, "200 decisions", second, ok=lambda rows: int(rows[0]["n"]) == 200)
    assert decided
    line = {k.decode(): int(v) for k, v in r.hgetall("rs:credit:shared").items()}
    approved = query(stack, "SELECT sum(toInt64(round(amount * 100))) AS cents FROM decisions FINAL "
                            "WHERE event_id LIKE 'cl-%' AND decision != 'decline'")[0]
    over = query(stack, "SELECT count() AS n FROM decisions FINAL WHERE event_id LIKE 'cl-%' "
                        "AND arrayExists(x -> startsWith(x, 'OVER_LIMIT'), reasons)")[0]
    assert line["available"] >= 0 and line["limit"] == 500_000
    assert line["reserved"] == int(approved["cents"]) <= 500_000  # exactly what the decisions approved
    assert int(over["n"]) > 0  # demand (~8,600) was over the limit: some were refused
