"""After the demo's streams run through a worker, no card number is anywhere in clear: not in
ClickHouse, not in Redis (keys or values), not on any topic the engine writes, not in a log."""

from __future__ import annotations

import re
import time

import pytest

from tests.conftest import produce, query, wait_for

pytestmark = pytest.mark.integration

OUTPUT_TOPICS = ("decisions", "alerts", "limits", "dead_letters", "sink")


def _topic_bytes(settings, names) -> bytes:
    from riskstream.bench.broker_runs import decisions_consumer

    consumer = decisions_consumer(settings, from_end=False, topics=names)
    chunks, quiet = [], time.monotonic()
    while time.monotonic() - quiet < 3:
        got = consumer.consume(10000, timeout=0.5)
        if got:
            quiet = time.monotonic()
        chunks += [(m.key() or b"") + b" " + (m.value() or b"") for m in got if not m.error()]
    consumer.close()
    return b"\n".join(chunks)


def _redis_bytes(settings) -> bytes:
    import redis as redis_lib

    r = redis_lib.Redis.from_url(settings.redis_url.get_secret_value())
    out = []
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        value = {b"string": lambda: [r.get(key)], b"hash": lambda: [b for kv in r.hgetall(key).items() for b in kv],
                 b"list": lambda: r.lrange(key, 0, -1), b"set": lambda: list(r.smembers(key)),
                 b"zset": lambda: r.zrange(key, 0, -1)}.get(kind, lambda: [])()
        out += [key, *[v for v in value if isinstance(v, bytes)]]
    return b"\n".join(out)


def test_no_card_number_in_clear_anywhere_after_the_demo_streams(stack, worker_factory):
    from riskstream.demo import build_stream
    from riskstream.sinks.clickhouse import table_names

    stream = build_stream(3000, progress=lambda s: None)
    pans = set()
    for topic, _, value in stream.messages:
        pans.update(m.decode() for m in re.findall(rb'"pan":"?(\d{13,19})', value))
    assert len(pans) >= 5, "the demo pays with some raw card numbers"
    worker = worker_factory()
    produce(stack, "transactions", [(k, v) for t, k, v in stream.messages if t == "transactions"])
    produce(stack, "labels", [(k, v) for t, k, v in stream.messages if t == "labels"])
    wait_for(lambda: query(stack, "SELECT count() AS n FROM decisions FINAL")[0]["n"], 120,
             "3,000 decisions", worker, ok=lambda n: n >= 3000)
    wait_for(lambda: query(stack, "SELECT count() AS n FROM dead_letters FINAL")[0]["n"], 60,
             "the malformed records dead-lettered", worker, ok=lambda n: n >= stream.malformed)
    token_cards = query(stack, "SELECT count() AS n FROM transactions FINAL WHERE startsWith(card_id, 'tok_')")
    assert token_cards[0]["n"] > 0, "the PAN payments are there, as tokens"

    places = {f"table {t}": b"\n".join(line.encode() for line in
                                        [str(row) for row in query(stack, f"SELECT * FROM {t}")])
              for t in table_names()}
    places["redis"] = _redis_bytes(stack)
    places["topics"] = _topic_bytes(stack, OUTPUT_TOPICS)
    places.update({f"log {p.name}": p.read_bytes() for p in (stack.data_dir / "logs").iterdir()})
    assert len(places["topics"]) > 100_000 and len(places["redis"]) > 0
    leaks = {where: sorted(p for p in pans | {"4111111111111111"} if p.encode() in blob)[:3]
             for where, blob in places.items()}
    assert not {w: found for w, found in leaks.items() if found}
