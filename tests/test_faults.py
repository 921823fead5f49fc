"""Faults while traffic flows, on the real embedded stack: a frozen sink, a frozen Valkey.

Each test paces transactions into a running worker, freezes a component with SIGSTOP for
longer than the consumer session, lets it go on, and then counts: every transaction has its
decision row in ClickHouse, and the frozen process is the same one (it recovered by itself).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import orjson
import pytest

from tests.conftest import produce, query, wait_for

pytestmark = pytest.mark.integration


def _paced(settings, prefix: str, total: int, per_second: int, stop: threading.Event,
           customer: str | None = None) -> threading.Thread:
    """Produce ``total`` transactions at ``per_second`` in a background thread."""

    def run() -> None:
        now_ms = int(time.time() * 1000)
        step = max(1, per_second // 10)
        for start in range(0, total, step):
            if stop.is_set():
                return
            records = [(f"card-{i % 97}".encode(), orjson.dumps({
                "transaction_id": f"{prefix}{i}", "event_time": now_ms + i, "card_id": f"card-{i % 97}",
                "merchant_id": f"m-{i % 13}", "amount": 10.0 + i % 200, "country": "NL", "channel": "ecom",
                **({"customer_id": customer} if customer else {})}))
                for i in range(start, min(total, start + step))]
            produce(settings, "transactions", records)
            time.sleep(0.1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _decided(settings, prefix: str) -> int:
    return query(settings, f"SELECT count() AS n FROM decisions FINAL WHERE event_id LIKE '{prefix}%'")[0]["n"]


def _freeze(pid: int, seconds: float) -> None:
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)


def test_sink_frozen_past_its_session_recovers_and_every_decision_lands(stack, worker_factory):
    """The operator's finding: a sink frozen past its consumer session crashed on resume with
    ``_NO_OFFSET`` and decisions stopped reaching ClickHouse for good."""
    worker = worker_factory()
    sink_pid = stack.stack_state()["pids"]["sink"]
    stop = threading.Event()
    total = 4000
    feeder = _paced(stack, "fz-", total, 500, stop)
    wait_for(lambda: _decided(stack, "fz-"), 60, "the worker deciding", worker, ok=lambda n: n > 0)
    _freeze(sink_pid, 2 * stack.session_timeout_ms / 1000)
    feeder.join(60)
    wait_for(lambda: _decided(stack, "fz-"), 120, f"{total} decision rows", worker, ok=lambda n: n == total)
    assert os.kill(sink_pid, 0) is None, "the sink recovered by itself"
    assert stack.stack_state()["pids"]["sink"] == sink_pid
    sink_log = (stack.data_dir / "logs" / "sink.log").read_text(errors="replace")
    assert "Traceback" not in sink_log, sink_log[-3000:]


def test_valkey_frozen_decisions_go_on_under_the_outage_policy_and_the_line_catches_up(stack, worker_factory):
    """Valkey (credit lines, limit controls) frozen for 8 s while card payments on a credit
    line flow: decisions go on (fail-open for transactions, said in the reasons), and once it
    answers the line holds exactly what the decisions approved."""
    import redis as redis_lib

    r = redis_lib.Redis.from_url(stack.redis_url.get_secret_value())
    produce(stack, "account_events", [(b"vk-line", orjson.dumps({
        "event_id": "vk-open", "event_time": int(time.time() * 1000) - 600_000, "account_id": "vk-line",
        "kind": "limit_change", "amount": 10_000_000.0}))])
    worker = worker_factory()
    wait_for(lambda: r.hget("rs:credit:vk-line", "limit"), 90, "the line opened", worker)
    valkey_pid = stack.stack_state()["pids"]["valkey"]
    stop = threading.Event()
    total = 5000
    feeder = _paced(stack, "vk-", total, 500, stop, customer="vk-line")
    wait_for(lambda: _decided(stack, "vk-"), 60, "the worker deciding", worker, ok=lambda n: n > 0)
    os.kill(valkey_pid, signal.SIGSTOP)
    try:
        time.sleep(2)
        during = _decided(stack, "vk-")
        # A limit change while Valkey is frozen: held in order, applied and stored when it answers
        produce(stack, "account_events", [(b"vk-line", orjson.dumps({
            "event_id": "vk-raise", "event_time": int(time.time() * 1000), "account_id": "vk-line",
            "kind": "limit_change", "amount": 20_000_000.0}))])
        time.sleep(6)
        later = _decided(stack, "vk-")
    finally:
        os.kill(valkey_pid, signal.SIGCONT)
    assert later - during > 1000, f"decisions went on while Valkey was frozen ({during} -> {later})"
    wait_for(lambda: int(r.hget("rs:credit:vk-line", "limit") or 0), 30, "the held limit change applied", worker,
             ok=lambda cents: cents == 2_000_000_000)
    wait_for(lambda: query(stack, "SELECT count() AS n FROM account_events FINAL WHERE event_id = 'vk-raise'"),
             60, "the held limit change stored", worker, ok=lambda rows: rows[0]["n"] == 1)
    assert "will retry from the last commit" not in worker.log_text(), "held, not read again and again"
    feeder.join(60)
    wait_for(lambda: _decided(stack, "vk-"), 120, f"{total} decision rows", worker, ok=lambda n: n == total)
    assert worker.proc.poll() is None, "the worker recovered by itself"
    unchecked = query(stack, "SELECT count() AS n FROM decisions FINAL WHERE event_id LIKE 'vk-%' "
                             "AND arrayExists(x -> startsWith(x, 'CREDIT_UNCHECKED') AND x LIKE '%fail-open%', reasons)")
    assert unchecked[0]["n"] > 0
    approved = query(stack, "SELECT sum(toInt64(round(amount * 100))) AS cents FROM decisions FINAL "
                            "WHERE event_id LIKE 'vk-%' AND decision != 'decline'")[0]["cents"]
    wait_for(lambda: int(r.hget("rs:credit:vk-line", "reserved") or 0), 30,
             "the reservations decided during the outage applied", worker, ok=lambda c: c == approved)


def test_limit_controls_issued_while_valkey_is_frozen_reach_it_when_it_answers(stack):
    import redis as redis_lib

    from riskstream.sinks.kafka import OutputPublisher, connect_redis
    from riskstream.streams.redis_outage import RedisGuard

    client = connect_redis(stack, 0.5)
    guard = RedisGuard(client, probe_interval_s=0.2)
    publisher = OutputPublisher(stack, redis_client=client, redis_guard=guard)
    control = {"entity_type": "card", "entity_id": "c-held", "action": "block", "max_amount": 0.0,
               "valid_until": time.time() + 3600, "reason": "held", "event_id": "e-held", "rules_version": "v",
               "issued_at": time.time()}
    valkey_pid = stack.stack_state()["pids"]["valkey"]
    os.kill(valkey_pid, signal.SIGSTOP)
    try:
        publisher.begin_batch()
        publisher.limits([control])
        publisher.end_batch()
        assert not guard.up and [c["entity_id"] for c in publisher.waiting_limits] == ["c-held"]
    finally:
        os.kill(valkey_pid, signal.SIGCONT)
    wait_for(lambda: guard.up, 10, "the guard seeing Valkey back")
    publisher.begin_batch()
    publisher.end_batch()  # the next batch writes what was held
    r = redis_lib.Redis.from_url(stack.redis_url.get_secret_value())
    assert r.hget(f"{stack.limit_key_prefix}card:c-held", "action") == b"block"
    assert publisher.waiting_limits == [] and guard.outages == 1


def test_a_transaction_read_again_gets_the_decision_it_was_given_the_first_time(stack):
    """A partition's next owner reads an uncommitted batch again with other state (here, other
    thresholds stand in for features that moved on). From the decision memory in Valkey it
    gives each record the decision, score and reasons of the first time. Valkey forgets its
    scripts when it restarts (here SCRIPT FLUSH before each pass): the memory loads them again."""
    from pydantic import SecretStr

    from riskstream.sinks.kafka import connect_redis
    from riskstream.streams.decision_memory import DecisionMemory
    from riskstream.streams.driver import Driver
    from riskstream.streams.redis_outage import RedisGuard

    now_ms = int(time.time() * 1000)
    values = [orjson.dumps({"transaction_id": f"dm-{i}", "event_time": now_ms - 60_000 + i, "card_id": f"c{i % 5}",
                            "merchant_id": "m", "amount": 10.0 + 97 * i, "country": "KP" if i % 11 == 0 else "NL"})
              for i in range(300)]
    offsets = list(range(1000, 1300))
    client = connect_redis(stack, 1.0)

    def decide(memory, **thresholds):
        settings = stack.model_copy(update={"pan_key": SecretStr("k" * 32), **thresholds})
        out = Driver(settings, memory=memory).process("transactions", values, [2] * 300, offsets, now_ms=now_ms)
        return list(zip(out.scored.decision.tolist(), out.scored.score.tolist(), map(tuple, out.scored.reasons)))

    client.script_flush()
    first = decide(DecisionMemory(client, RedisGuard(client)))
    other = dict(step_up_score=0.0, review_score=0.0, decline_score=0.0)  # everything declined
    assert decide(None, **other) != first, "without the memory the second pass decides otherwise"
    client.script_flush()
    memory = DecisionMemory(client, RedisGuard(client))
    assert decide(memory, **other) == first
    assert memory.recalled == 300


def test_a_sink_or_valkey_that_dies_is_started_again_and_nothing_is_lost(stack, worker_factory):
    """The embedded stack supervises what it started: SIGKILLed, the sink and Valkey come back
    on their ports with their data (chDB tables, Valkey's append-only file)."""
    import redis as redis_lib

    worker = worker_factory()
    r = redis_lib.Redis.from_url(stack.redis_url.get_secret_value())
    r.set("survives-a-restart", "yes")
    time.sleep(1.5)  # Valkey's append-only file is synced every second
    stop = threading.Event()
    total = 3000
    feeder = _paced(stack, "sv-", total, 500, stop)
    wait_for(lambda: _decided(stack, "sv-"), 60, "the worker deciding", worker, ok=lambda n: n > 0)
    before = stack.stack_state()["pids"]
    os.kill(before["sink"], signal.SIGKILL)
    os.kill(before["valkey"], signal.SIGKILL)
    wait_for(lambda: stack.stack_state().get("restarts", {}), 60, "both started again",
             ok=lambda restarts: {"sink", "valkey"} <= set(restarts))
    feeder.join(60)
    wait_for(lambda: _decided(stack, "sv-"), 120, f"{total} decision rows", worker, ok=lambda n: n == total)
    after = stack.stack_state()["pids"]
    assert after["sink"] != before["sink"] and after["valkey"] != before["valkey"]
    assert r.get("survives-a-restart") == b"yes"
    assert worker.proc.poll() is None
    assert "starting it again" in (stack.data_dir / "logs" / "sink.log").read_text()


def test_stack_up_supervises_until_stack_down(tmp_path):
    import json
    import subprocess
    import sys

    env = dict(os.environ, RISKSTREAM_DATA_DIR=str(tmp_path / "rs"))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "riskstream", "stack", *args], env=env, capture_output=True,
                              text=True, timeout=120)

    assert cli("up").returncode == 0
    state = json.loads((tmp_path / "rs" / "stack.json").read_text())
    try:
        os.kill(state["pids"]["valkey"], signal.SIGKILL)
        wait_for(lambda: json.loads((tmp_path / "rs" / "stack.json").read_text()).get("restarts", {}), 30,
                 "Valkey started again", ok=lambda restarts: "valkey" in restarts)
        status = cli("status")
        assert status.returncode == 0 and "started again 1x" in status.stdout, status.stdout
        later = json.loads((tmp_path / "rs" / "stack.json").read_text())
    finally:
        down = cli("down")
    assert down.returncode == 0
    from riskstream.stack import pid_alive

    pids = later["pids"] | {"supervisor": later["supervisor"]}
    assert pids["valkey"] != state["pids"]["valkey"]
    time.sleep(0.5)
    assert not [name for name, pid in pids.items() if pid_alive(pid)], "stack down left something running"


@pytest.mark.only_broker("kafka")
def test_the_broker_restarts_and_the_worker_and_sink_go_on(stack, worker_factory):
    """Apache Kafka killed mid-stream: the stack starts it again on its port with its log
    directory, and the worker and the sink reconnect by themselves."""
    worker = worker_factory()
    stop = threading.Event()
    total = 2000
    feeder = _paced(stack, "br-", 1000, 500, stop)
    wait_for(lambda: _decided(stack, "br-"), 90, "the worker deciding", worker, ok=lambda n: n > 0)
    feeder.join(60)
    broker = stack.stack_state()["pids"]["broker"]
    os.kill(broker, signal.SIGKILL)
    wait_for(lambda: stack.stack_state().get("restarts", {}), 120, "the broker started again",
             ok=lambda restarts: "broker" in restarts)
    produce(stack, "transactions", [(f"card-{i % 97}".encode(), orjson.dumps({
        "transaction_id": f"br-{i}", "event_time": int(time.time() * 1000), "card_id": f"card-{i % 97}",
        "merchant_id": "m-1", "amount": 10.0, "country": "NL"})) for i in range(1000, total)])
    wait_for(lambda: _decided(stack, "br-"), 180, f"{total} decision rows", worker, ok=lambda n: n == total)
    assert worker.proc.poll() is None


def test_the_same_transaction_sent_twice_is_decided_and_counted_once(stack):
    """A transaction service re-sends 40 transactions (new offsets, same ids), and one batch
    holds an id twice: each repeat gets the first decision, score and reasons, and the card's
    features count each transaction once. Without the memory the card counts them twice."""
    import uuid

    from pydantic import SecretStr

    from riskstream.sinks.kafka import connect_redis
    from riskstream.streams.decision_memory import DecisionMemory
    from riskstream.streams.driver import Driver
    from riskstream.streams.redis_outage import RedisGuard

    now_ms = int(time.time() * 1000)

    def tx(i: int) -> bytes:
        return orjson.dumps({"transaction_id": f"dup-{i}", "event_time": now_ms - 600_000 + i * 1000,
                             "card_id": "dup-card", "merchant_id": f"m{i % 3}", "amount": 20.0 + 131 * i,
                             "country": "KP" if i % 7 == 0 else "NL"})

    sent = [tx(i) for i in range(40)]
    probe = [orjson.dumps({"transaction_id": "dup-probe", "event_time": now_ms, "card_id": "dup-card",
                           "merchant_id": "m0", "amount": 15.0})]
    settings = stack.model_copy(update={"pan_key": SecretStr("k" * 32)})
    client = connect_redis(stack, 1.0)

    def run(memory, resend: bool, twice_in_batch: bool = True):
        driver = Driver(settings, memory=memory)
        batch = sent + [sent[5]] if twice_in_batch else sent
        first = driver.process("transactions", batch, [0] * len(batch), list(range(len(batch))), now_ms=now_ms)
        again = None
        if resend:
            again = driver.process("transactions", sent, [0] * 40, list(range(100, 140)), now_ms=now_ms)
        counted = driver.process("transactions", probe, [0], [200], now_ms=now_ms)
        return first.scored, again.scored if again else None, counted.scored.features["card_txn_count_1d"][0]

    def answers(scored, rows):
        return [(scored.decision[i], float(scored.score[i]), list(scored.reasons[i])) for i in rows]

    first, again, count = run(DecisionMemory(client, RedisGuard(client), prefix=f"rs:decided:{uuid.uuid4()}:"),
                              resend=True)
    assert answers(again, range(40)) == answers(first, range(40))
    assert answers(first, [40]) == answers(first, [5]), "an id twice in one batch: the second is the first"
    assert any(d != "approve" for d in first.decision), "some of these transactions are stepped up or worse"
    _, _, count_once = run(None, resend=False, twice_in_batch=False)
    _, _, count_twice = run(None, resend=True)
    assert count == count_once
    assert count_twice > count_once, "without the memory the re-sent transactions count twice"


def test_decisions_made_while_valkey_is_frozen_are_remembered_and_written_when_it_answers(stack):
    """Valkey frozen: this worker still recognises a transaction it decided meanwhile (the
    decisions wait in process), and once Valkey answers they are written, so another worker
    recognises them too."""
    import uuid

    from pydantic import SecretStr

    from riskstream.sinks.kafka import connect_redis
    from riskstream.streams.decision_memory import DecisionMemory
    from riskstream.streams.driver import Driver
    from riskstream.streams.redis_outage import RedisGuard

    now_ms = int(time.time() * 1000)
    values = [orjson.dumps({"transaction_id": f"vf-{i}", "event_time": now_ms - 60_000 + i, "card_id": f"c{i % 4}",
                            "merchant_id": "m", "amount": 10.0 + 173 * i, "country": "KP" if i % 5 == 0 else "NL"})
              for i in range(60)]
    settings = stack.model_copy(update={"pan_key": SecretStr("k" * 32)})
    prefix = f"rs:decided:{uuid.uuid4()}:"
    client = connect_redis(stack, 0.3)
    guard = RedisGuard(client, probe_interval_s=0.1)
    memory = DecisionMemory(client, guard, prefix=prefix)
    driver = Driver(settings, memory=memory)
    valkey_pid = stack.stack_state()["pids"]["valkey"]
    os.kill(valkey_pid, signal.SIGSTOP)
    try:
        first = driver.process("transactions", values, [1] * 60, list(range(60)), now_ms=now_ms).scored
        assert not guard.up and sum(map(len, memory.unwritten.values())) == 60
        again = driver.process("transactions", values, [1] * 60, list(range(500, 560)), now_ms=now_ms).scored
        assert memory.recalled == 60
        assert list(again.decision) == list(first.decision) and list(again.score) == list(first.score)
    finally:
        os.kill(valkey_pid, signal.SIGCONT)
    wait_for(lambda: guard.up, 20, "the guard seeing Valkey again")
    driver.process("transactions", values[:1], [1], [600], now_ms=now_ms)  # the next batch writes them
    assert not memory.unwritten
    other = DecisionMemory(connect_redis(stack, 1.0), RedisGuard(connect_redis(stack, 1.0)), prefix=prefix)
    recalled = other.recall("transactions", first.batch.transaction_id, first.batch.event_time_ms)
    assert sorted(recalled) == list(range(60))
    assert [recalled[i].decision for i in range(60)] == list(first.decision)


def test_a_loan_application_sent_twice_gets_its_first_decision(stack):
    import uuid

    from pydantic import SecretStr

    from riskstream.sinks.kafka import connect_redis
    from riskstream.streams.decision_memory import DecisionMemory
    from riskstream.streams.driver import Driver
    from riskstream.streams.redis_outage import RedisGuard

    now_ms = int(time.time() * 1000)
    apps = [orjson.dumps({"application_id": f"la-{i}", "event_time": now_ms - 1000 + i, "customer_id": f"lc-{i}",
                          "amount": 90_000 if i % 3 == 0 else 4000, "income": 12_000 if i % 3 == 0 else 80_000,
                          "term_months": 36, "credit_score": 420 if i % 3 == 0 else 760}) for i in range(12)]
    client = connect_redis(stack, 1.0)
    memory = DecisionMemory(client, RedisGuard(client), prefix=f"rs:decided:{uuid.uuid4()}:")
    driver = Driver(stack.model_copy(update={"pan_key": SecretStr("k" * 32)}), memory=memory)
    first = driver.process("loan_applications", apps, now_ms=now_ms).decisions
    later = driver.process("loan_applications", apps[3:5] + apps[:3], now_ms=now_ms + 60_000)
    assert memory.recalled == 5
    by_id = {d["event_id"]: d for d in first}
    assert later.decisions == [by_id[d["event_id"]] for d in later.decisions]
    assert len(later.rows["loan_applications"]) == 5
    assert len({d["decision"] for d in first}) > 1, "the applications are decided differently"
