"""Key rotation and personal fields (schemas.pan): tokens say which key made them, a card
keeps its history across a rotation while the old key is matched, and configured personal
fields never leave ingress in clear."""

from __future__ import annotations

import time

import orjson
import pytest
from pydantic import SecretStr

from riskstream.settings import ConfigError, Settings
from riskstream.streams.driver import Driver

PAN = "4111111111111111"
OLD_KEY, NEW_KEY = "o" * 32, "n" * 32


def _key_file(tmp_path, text: str) -> str:
    path = tmp_path / "pan.keys"
    path.write_text(text)
    return str(path)


def _transactions(start: int, count: int, now_ms: int, **extra) -> list[bytes]:
    return [orjson.dumps({"transaction_id": f"kr-{i}", "event_time": now_ms - 3_600_000 + i * 1000, "pan": PAN,
                          "merchant_id": "m1", "amount": 25.0 + i, **extra}) for i in range(start, start + count)]


def test_a_card_keeps_its_history_across_a_key_rotation_while_the_old_key_is_matched(tmp_path):
    now_ms = int(time.time() * 1000)
    before = Driver(Settings(data_dir=tmp_path / "d", pan_key=SecretStr(OLD_KEY)))
    first = before.process("transactions", _transactions(0, 20, now_ms), [0] * 20, list(range(20)), now_ms=now_ms)
    assert first.scored.batch.card_id[0].startswith("tok_")
    saved = before.features.snapshot()

    def after_rotation(key_file_text: str):
        settings = Settings(data_dir=tmp_path / "d", pan_key_file=_key_file(tmp_path, key_file_text))
        driver = Driver(settings)
        driver.features.restore(saved)  # a worker restarted with the new key file restores its state
        out = driver.process("transactions", _transactions(20, 1, now_ms), [0], [20], now_ms=now_ms)
        return out.scored.batch.card_id[0], out.scored.features["card_txn_count_1d"][0]

    grace = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 30 * 86_400))
    token, counted = after_rotation(f"# rotated\n2 {NEW_KEY}\n1 {OLD_KEY} until {grace}\n")
    assert token.startswith("tok2_") and token != first.scored.batch.card_id[0]
    assert counted > 19, "the card's 20 earlier transactions still count under its new token"
    _, forgotten = after_rotation(f"2 {NEW_KEY}\n")
    assert forgotten == 0, "without the retired key the new token starts afresh"
    past = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86_400))
    _, expired = after_rotation(f"2 {NEW_KEY}\n1 {OLD_KEY} until {past}\n")
    assert expired == 0, "after its end date the old key is no longer matched"


@pytest.mark.parametrize("text, says", [
    ("2 short\n", ":1: the key of version 2 is shorter than 16 characters"),
    (f"1 {OLD_KEY}\n\n1 {NEW_KEY}\n", ":3: key version 1 appears twice"),
    (f"2 {NEW_KEY}\n1 {OLD_KEY} until someday\n", ":2: 'someday' is not a date"),
    (f"2 {NEW_KEY} until 2030-01-01\n", "the newest key (version 2) must not have an end date"),
    (f"v2 {NEW_KEY}\n", ":1: expected '<version> <key>'"),
    ("# nothing\n", "no key in the file"),
])
def test_a_bad_key_file_is_refused_naming_the_line_and_never_the_key(tmp_path, text, says):
    path = _key_file(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        Driver(Settings(data_dir=tmp_path / "d", pan_key_file=path))
    assert path in str(err.value) and says in str(err.value)
    assert OLD_KEY not in str(err.value) and NEW_KEY not in str(err.value)


def test_personal_fields_are_tokenized_in_every_stream_and_in_dead_letters(tmp_path):
    now_ms = int(time.time() * 1000)
    driver = Driver(Settings(data_dir=tmp_path / "d", pan_key=SecretStr(NEW_KEY),
                             personal_fields=["email", "ip"]))
    tx = driver.process("transactions", _transactions(0, 3, now_ms, ip="203.0.113.7"), now_ms=now_ms)
    ips = set(tx.scored.batch.optional["ip"].tolist())
    assert len(ips) == 1 and ips.pop().startswith("tok_")
    loans = driver.process("loan_applications", [
        orjson.dumps({"application_id": "a1", "event_time": now_ms, "customer_id": "c1", "amount": 5000,
                      "income": 60000, "term_months": 36, "credit_score": 720, "email": "jan@example.org"}),
        b'{"application_id": "a2", "email": "piet@example.org", "amount": "broken'], now_ms=now_ms)
    stored = orjson.dumps([loans.decisions, loans.rows, [d.payload.decode() for d in loans.dead]])
    assert b"@example.org" not in stored and b"203.0.113.7" not in orjson.dumps(tx.scored.batch.optional["ip"].tolist())
    assert len(loans.dead) == 1 and b'"email": "tok_' in loans.dead[0].payload
