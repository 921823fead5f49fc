"""The real Faust worker on the real embedded broker, Valkey and chDB."""

from __future__ import annotations

import re
import signal
import time

import orjson
import pytest
import redis

from tests.conftest import produce, query, wait_for

pytestmark = pytest.mark.integration

PAN = "4111111111111111"


def _tx(i: int, now_ms: int, **extra) -> bytes:
    rec = {"transaction_id": f"it-{i}", "event_time": now_ms - 60_000 + i, "card_id": f"card-{i % 7}",
           "merchant_id": f"m-{i % 3}", "amount": 20.0 + i, "country": "NL", "channel": "pos"}
    rec.update(extra)
    return orjson.dumps(rec)


def _decisions(settings, prefix: str) -> list[dict]:
    return query(settings, f"SELECT event_id, decision, score, reasons, rules_version, model_version "
                           f"FROM decisions FINAL WHERE event_id LIKE '{prefix}%' ORDER BY event_id")


@pytest.mark.both_brokers
def test_worker_scores_stores_dead_letters_and_limits(stack, worker_factory):
    now_ms = int(time.time() * 1000)
    worker = worker_factory()
    good = [(f"card-{i % 7}".encode(), _tx(i, now_ms)) for i in range(200)]
    # A deny-listed country is declined by rule; a card paid with a raw PAN is tokenized.
    good.append((b"card-x", _tx(200, now_ms, country="KP")))
    good.append((b"pan", orjson.dumps({"transaction_id": "it-201", "event_time": now_ms - 1000, "pan": PAN,
                                       "merchant_id": "m-1", "amount": 55.5})))
    bad = [
        (b"b", b"{broken json"),
        (b"b", orjson.dumps({"transaction_id": "bad-amount", "event_time": now_ms, "card_id": "c",
                             "merchant_id": "m", "amount": "lots"})),
        (b"b", orjson.dumps({"transaction_id": "bad-missing", "event_time": now_ms, "card_id": "c"})),
        (b"b", orjson.dumps({"transaction_id": "bad-pan", "pan": PAN, "amount": "x"})),
        (b"b", orjson.dumps({"transaction_id": "bad-big", "event_time": now_ms, "card_id": "c",
                             "merchant_id": "m", "amount": 1.0, "pad": "x" * 70_000})),
    ]
    produce(stack, "transactions", good + bad)
    loan = {"application_id": "app-1", "event_time": now_ms - 5000, "customer_id": "cust-1", "amount": 20000,
            "income": 30000, "term_months": 36, "existing_debt": 25000, "credit_score": 540}
    produce(stack, "loan_applications", [(b"cust-1", orjson.dumps(loan))])
    produce(stack, "market", [(b"EURUSD", orjson.dumps({"instrument": "EURUSD", "event_time": now_ms - 10,
                                                        "price": 1.08, "volume": 1e6})),
                              (b"EURUSD", orjson.dumps({"instrument": "EURUSD", "event_time": now_ms, "price": -1}))])

    rows = wait_for(lambda: _decisions(stack, "it-"), 90, "202 transaction decisions in ClickHouse",
                    worker, ok=lambda r: len(r) == 202)
    assert len({r["event_id"] for r in rows}) == 202
    assert all(0.0 <= r["score"] <= 1.0 for r in rows)
    assert all(r["rules_version"] and r["model_version"] for r in rows)
    kp = next(r for r in rows if r["event_id"] == "it-200")
    assert kp["decision"] == "decline"
    assert any(reason.startswith("DENY_COUNTRY") for reason in kp["reasons"]), kp["reasons"]

    credit = wait_for(lambda: query(stack, "SELECT decision, score, reasons FROM decisions FINAL "
                                           "WHERE stream = 'loan_applications'"), 60, "loan decision", worker)
    assert len(credit) == 1 and credit[0]["decision"] in ("approve", "review", "decline")
    assert credit[0]["reasons"], "a credit decision carries its reasons"

    dead = wait_for(lambda: query(stack, "SELECT topic, offset, error, payload FROM dead_letters FINAL "
                                        "ORDER BY topic, offset"), 60, "dead letters", worker, ok=lambda d: len(d) >= 6)
    errors = " | ".join(d["error"] for d in dead)
    for expected in ("invalid JSON", "'amount' must be a number", "missing required field", "oversized",
                     "'price'"):
        assert expected in errors, (expected, errors)
    assert all(d["offset"] >= 0 for d in dead if d["topic"] == "transactions")

    # The PAN is nowhere in clear: not in decisions, scored transactions, nor dead letters.
    for table in ("decisions", "transactions", "dead_letters", "alerts", "limits"):
        hits = query(stack, f"SELECT count() AS n FROM {table} WHERE position(toString(tuple(*)), '{PAN}') > 0")
        assert hits[0]["n"] == 0, table
    tokenized = query(stack, "SELECT card_id FROM transactions FINAL WHERE transaction_id = 'it-201'")
    assert tokenized[0]["card_id"].startswith("tok_")

    stored_ticks = query(stack, "SELECT count() AS n FROM market_ticks")
    assert stored_ticks[0]["n"] == 1

    # The worker keeps running after poison records.
    assert worker.proc.poll() is None


@pytest.mark.both_brokers
def test_block_rule_sets_a_redis_limit_and_publish_changes_decisions(stack, worker_factory, tmp_path):
    from riskstream.rules.publishing import publish_rule_set

    now_ms = int(time.time() * 1000)
    worker = worker_factory()
    produce(stack, "transactions", [(b"c1", _tx(0, now_ms, card_id="hot-card", amount=900.0))])
    first = wait_for(lambda: _decisions(stack, "it-0"), 90, "first decision", worker)
    assert first[0]["decision"] != "decline"

    rules = """
version: "test-1"
rules:
  - id: block_big_spender
    version: 1
    description: block cards spending over 500 at once
    action: block_card
    params: {hours: 2}
    reason: {code: BIG_SPEND, text: "amount {amount} over 500"}
    when: amount > 500
"""
    publish_rule_set(stack, rules, "test-rules.yaml")
    # A rule published on the control topic reaches the running worker without a restart.
    deadline = time.monotonic() + 60
    i = 1
    decided = None
    while time.monotonic() < deadline:
        produce(stack, "transactions", [(b"c1", _tx(i, now_ms, card_id="hot-card", amount=900.0))])
        rows = wait_for(lambda: _decisions(stack, f"it-{i}"), 60, f"decision it-{i}", worker)
        if rows[0]["rules_version"].startswith("test-1"):
            decided = rows[0]
            break
        i += 1
        time.sleep(0.5)
    assert decided is not None, "published rule set never took effect"
    assert decided["decision"] == "decline"
    assert any(r.startswith("BIG_SPEND") for r in decided["reasons"])

    r = redis.Redis.from_url(stack.redis_url.get_secret_value())
    limit = wait_for(lambda: r.hgetall("rs:limit:card:hot-card"), 30, "Redis limit hash")
    assert limit[b"action"] == b"block"
    assert 0 < r.ttl("rs:limit:card:hot-card")
    limits = wait_for(lambda: query(stack, "SELECT entity_id, action FROM limits FINAL"), 30, "limits row", worker)
    assert {"entity_id": "hot-card", "action": "block"} in limits


@pytest.mark.both_brokers
def test_signal_stops_worker_promptly_with_everything_flushed(stack, worker_factory, stack_broker):
    from confluent_kafka import Consumer, TopicPartition

    # Both signals go through one handler: SIGTERM (a service manager) on one broker, SIGINT
    # (Ctrl-C) on the other, rather than both on both (half a minute of suite).
    sig = signal.SIGTERM if stack_broker == "tansu" else signal.SIGINT

    now_ms = int(time.time() * 1000)
    worker = worker_factory()
    produce(stack, "transactions", [(f"card-{i % 50}".encode(), _tx(i, now_ms, card_id=f"card-{i % 50}"))
                                    for i in range(3000)])
    wait_for(lambda: _decisions(stack, "it-"), 90, "first decisions", worker)
    t0 = time.monotonic()
    code = worker.stop(sig, timeout=10.0)  # raises if the worker is still alive after 10 s
    stopped_in = time.monotonic() - t0
    assert code in (0, -sig), worker.log_text()[-3000:]
    assert stopped_in < 10.0

    # What reached the decisions topic is what ClickHouse holds: nothing buffered was lost.
    # (Counted by reading the topic: the embedded broker's watermarks are not message counts.)
    c = Consumer({**stack.kafka_client_config(), "group.id": "check", "auto.offset.reset": "earliest"})
    topic = stack.topic("decisions")
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    ids: set[str] = set()
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < 3.0:
        msgs = c.consume(5000, timeout=0.5)
        if msgs:
            idle_since = time.monotonic()
        ids.update(orjson.loads(m.value())["event_id"] for m in msgs if not m.error())
    c.close()
    on_topic = len(ids)
    assert on_topic > 0
    stored = wait_for(lambda: query(stack, "SELECT count() AS n FROM decisions FINAL")[0]["n"], 30,
                      f"{on_topic} decisions stored", ok=lambda n: n >= on_topic)
    assert stored == on_topic


@pytest.mark.both_brokers
def test_feature_and_model_state_survive_a_worker_restart(stack, worker_factory):
    """20 transactions on one card before a restart, one after: the velocity rule
    (card_txn_count_1h >= 15; the 1 h count decays exponentially, so 20 events two minutes
    back still count ~19) can only fire after the restart if the card's feature state came
    back from Redis."""
    now_ms = int(time.time() * 1000)
    first = worker_factory()
    burst = [(b"busy", _tx(i, now_ms - 120_000, card_id="busy-card", amount=12.0 + i)) for i in range(20)]
    produce(stack, "transactions", burst)
    wait_for(lambda: _decisions(stack, "it-"), 90, "20 decisions", first, ok=lambda r: len(r) == 20)
    assert first.stop(signal.SIGTERM, timeout=10.0) in (0, -signal.SIGTERM)

    r = redis.Redis.from_url(stack.redis_url.get_secret_value())
    assert r.keys("rs:state:riskstream-worker:features:*"), "feature state saved at shutdown"
    assert r.exists("rs:state:riskstream-worker:driver"), "model state saved at shutdown"

    second = worker_factory()
    produce(stack, "transactions", [(b"busy", _tx(99, now_ms - 1000, card_id="busy-card", amount=30.0))])
    row = wait_for(lambda: _decisions(stack, "it-99"), 90, "decision after restart", second)[0]
    assert any(reason.startswith("VELOCITY_1H") for reason in row["reasons"]), row["reasons"]
    assert "restored model state" in second.log_text()
    assert re.search(r"feature state restored for [1-9]", second.log_text()), second.log_text()[-2000:]


@pytest.mark.both_brokers
def test_an_idle_worker_commits_everything_it_published_at_once(stack, worker_factory):
    """Commits are batched over RISKSTREAM_COMMIT_INTERVAL_MS, but a worker that runs out of
    input commits what it has published straight away: a restart then repeats nothing."""
    from confluent_kafka import Consumer, TopicPartition

    now_ms = int(time.time() * 1000)
    # an interval far longer than the test: only the idle commit can get the offsets in
    worker = worker_factory(extra_env={"RISKSTREAM_COMMIT_INTERVAL_MS": "60000"})
    group = Consumer({**stack.kafka_client_config(), "group.id": f"{stack.topic_prefix}{stack.consumer_group}",
                      "enable.auto.commit": False})
    topic = stack.topic("transactions")
    parts = [TopicPartition(topic, p) for p in range(stack.topic_partitions)]

    def committed_offsets() -> int | None:
        from confluent_kafka import KafkaException

        try:
            return sum(max(tp.offset, 0) for tp in group.committed(parts, timeout=10))
        except KafkaException as exc:  # Kafka's group coordinator is still being elected
            if exc.args[0].retriable() or exc.args[0].code() == exc.args[0].NOT_COORDINATOR:
                return None
            raise

    try:
        for burst in range(3):  # the first batch commits at once; the later ones fall inside the interval
            produce(stack, "transactions", [(f"card-{i % 7}".encode(), _tx(1000 * burst + i, now_ms))
                                             for i in range(100)])
            if burst == 0:
                wait_for(committed_offsets, 90, "the first batch committed", worker, ok=lambda n: n == 100)
            else:
                time.sleep(0.5)
        committed = wait_for(committed_offsets, 45, "all 300 transactions committed", worker,
                             ok=lambda n: n == 300)
    finally:
        group.close()
    assert committed == 300
    rows = wait_for(lambda: _decisions(stack, "it-"), 30, "300 decisions in ClickHouse", worker,
                    ok=lambda r: len(r) == 300)
    assert len({r["event_id"] for r in rows}) == 300  # and each was decided and stored once


def test_the_worker_logs_at_the_level_it_is_given_not_at_debug():
    """Faust's terminal spinner put the root logger at DEBUG, so every library's debug line
    became a log record (aiokafka writes one per fetch request) though none was shown."""
    import logging

    import faust

    from riskstream.settings import load_settings
    from riskstream.streams.worker import faust_worker

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        worker = faust_worker(faust.App("log-level-test", broker="kafka://127.0.0.1:9"),
                              load_settings(None).model_copy(update={"log_level": "WARNING"}))
        worker._setup_logging()  # what the worker does as it starts
        assert not logging.getLogger("aiokafka.consumer.fetcher").isEnabledFor(logging.DEBUG)
        assert logging.getLogger("aiokafka.consumer.fetcher").isEnabledFor(logging.WARNING)
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers
