"""Input decoding and validation: the columnar fast path against the per-row reference."""

from __future__ import annotations

import random

import numpy as np
import orjson
import pytest

from riskstream.schemas.events import decode_rows, json_documents
from riskstream.schemas.pan import PanTokenizer, luhn_valid
from riskstream.schemas.registry import STREAMS
from riskstream.schemas.transactions import constant_column, decode_transactions

NOW = 1_763_800_000_000
TOK = PanTokenizer(b"test-key-of-32-bytes-for-hmac-ok")
PAN = "4111111111111111"


def _good(i: int) -> dict:
    return {"transaction_id": f"t{i}", "event_time": NOW - 1000 * i, "card_id": f"card-{i % 5}",
            "merchant_id": f"m{i % 3}", "amount": 10.0 + i, "country": "NL", "channel": "ecom",
            "device_id": f"d{i}", "ip": "10.0.0.1", "lat": 52.1, "lon": 4.3}


MUTATIONS = [
    lambda r: r,
    lambda r: {**r, "amount": int(r["amount"])},
    lambda r: {**r, "amount": str(r["amount"])},          # numeric string: accepted by the slow path
    lambda r: {**r, "amount": "lots"},
    lambda r: {**r, "amount": -1},
    lambda r: {**r, "amount": 1e12},
    lambda r: {**r, "amount": True},
    lambda r: {k: v for k, v in r.items() if k != "amount"},
    lambda r: {k: v for k, v in r.items() if k != "card_id"},
    lambda r: {**{k: v for k, v in r.items() if k != "card_id"}, "customer_id": "cust-1"},
    lambda r: {**{k: v for k, v in r.items() if k != "card_id"}, "pan": PAN},
    lambda r: {**r, "card_id": PAN},                      # a PAN in the card id is tokenized
    lambda r: {**r, "customer_id": PAN},
    lambda r: {**r, "event_time": "2025-11-20T10:00:00Z"},
    lambda r: {**r, "event_time": (NOW // 1000)},         # seconds, not ms
    lambda r: {**r, "event_time": NOW + 10 * 86_400_000},
    lambda r: {**r, "event_time": None},
    lambda r: {**r, "merchant_id": None, "terminal_id": "term-9"},
    lambda r: {**r, "merchant_id": None},
    lambda r: {**r, "mcc": 5411},                          # numeric MCC becomes "5411"
    lambda r: {**r, "lat": 123.0},
    lambda r: {**r, "lat": None, "lon": None},
    lambda r: {**r, "transaction_id": 12345},
    lambda r: {**r, "transaction_id": "x" * 200},
    lambda r: {**r, "device_id": ["a"]},
    lambda r: [1, 2, 3],
]


def _messages(seed: int, n: int = 400) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if rng.random() < 0.03:
            out.append(b"{broken")
            continue
        out.append(orjson.dumps(rng.choice(MUTATIONS)(_good(i))))
    return out


def _same_as_reference(values: list[bytes], arrow_min_rows: int = 0, partition: int = 1):
    """Decode through the fast paths (Arrow's reader forced on for any batch size, unless
    ``arrow_min_rows`` says otherwise) and check against the per-row reference: same rows,
    same values, same dead letters."""
    kw = dict(tokenizer=TOK, partitions=[partition] * len(values), offsets=list(range(len(values))), now_ms=NOW)
    got, got_dead = decode_transactions(values, arrow_min_rows=arrow_min_rows, **kw)
    ref, ref_dead = decode_transactions(values, fast=False, **kw)
    assert got.n == ref.n
    for name in ("transaction_id", "card_id", "merchant_id", "offset", "partition", "event_time_ms"):
        assert list(getattr(got, name)) == list(getattr(ref, name)), name
    for name in ("amount", "lat", "lon"):
        np.testing.assert_array_equal(getattr(got, name), getattr(ref, name))
    for k in got.optional:
        assert list(got.optional[k]) == list(ref.optional[k]), k
    assert [(d.offset, d.error, d.payload) for d in got_dead] == [(d.offset, d.error, d.payload) for d in ref_dead]
    return got, got_dead


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_fast_path_matches_reference(seed):
    batch, dead = _same_as_reference(_messages(seed), arrow_min_rows=10**9, partition=seed)  # orjson's path
    assert batch.n > 0 and len(dead) > 0


# Rows the Arrow reader takes (then checked per row where the column checks cannot vouch for
# them) and rows of JSON types it refuses, which send the whole batch to the orjson path.
ARROW_READS = {0, 1, 4, 5, 7, 8, 9, 11, 12, 14, 15, 16, 17, 18, 20, 21, 23}


@pytest.mark.parametrize("mutation", range(len(MUTATIONS)))
def test_arrow_reader_matches_reference(mutation):
    from riskstream.schemas.transactions_arrow import arrow_transactions

    values = [orjson.dumps(_good(i)) for i in range(50)]
    for i in (7, 20):
        values[i] = orjson.dumps(MUTATIONS[mutation](_good(i)))
    read = arrow_transactions(values, TOK, "transactions", None, None, 65536, 10_000_000.0, NOW)
    assert (read is not None) == (mutation in ARROW_READS)
    _same_as_reference(values)


@pytest.mark.parametrize("raw, error", [
    (b'{"transaction_id":"tz","event_time":%d,"card_id":"c","merchant_id":"m","amount":NaN}', "invalid JSON"),
    (b'{"transaction_id":"tz","event_time":%d,"card_id":"c","merchant_id":"m","amount":1,"lat":Infinity}',
     "invalid JSON"),
    (b'{"transaction_id":"tz","event_time":%d,"card_id":"c","merchant_id":"m","amount":1}/* x */', "invalid JSON"),
    (b'{"transaction_id":"tz","event_time":%d,"card_id":"c","merchant_id":"m","amount":1}{"a":1}', "invalid JSON"),
    (b'{"transaction_id":"tz","event_time":%d,"card_id":"\\u0661\\u0662","merchant_id":"m","amount":1}', None),
    (b'{"transaction_id":"tz","event_time":%d,"card_id":"","customer_id":"","merchant_id":"m","amount":1}',
     "one of 'card_id'"),
    (b'{}', "missing required field 'transaction_id'"),
    (b'', "invalid JSON"),
])
def test_what_the_arrow_reader_lets_through_is_judged_as_orjson_would(raw, error):
    """Arrow reads NaN and Infinity (orjson refuses them) and other-script digits; the per-row
    validator gets those rows, so they end as the reference ends them."""
    values = [orjson.dumps(_good(i)) for i in range(20)]
    values[3] = raw % NOW if b"%d" in raw else raw
    batch, dead = _same_as_reference(values)
    assert [d.offset for d in dead] == ([3] if error else [])
    assert error is None or error in dead[0].error


def test_arrow_reader_keeps_its_string_columns_for_the_clickhouse_blocks():
    values = [orjson.dumps(_good(i)) for i in range(40)]
    batch, dead = _same_as_reference(values)
    assert not dead and batch.arrow is not None
    for name in ("transaction_id", "card_id", "merchant_id", "country", "device_id", "account_id"):
        assert batch.arrow[name].to_pylist() == list(batch.column(name)), name
    # A row replaced by the per-row validator: the batch keeps no Arrow copy to disagree with.
    values[5] = orjson.dumps({**_good(5), "card_id": PAN})
    batch, _ = _same_as_reference(values)
    assert batch.arrow is None and batch.card_id[5].startswith("tok_")


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_arrow_reader_matches_reference_on_mixed_batches(seed):
    rng = random.Random(seed)
    readable = [MUTATIONS[i] for i in sorted(ARROW_READS)]
    _same_as_reference([orjson.dumps(rng.choice(readable)(_good(i))) for i in range(400)])


def test_every_valid_row_is_kept_in_order():
    values = [orjson.dumps(_good(i)) for i in range(50)]
    batch, dead = decode_transactions(values, tokenizer=TOK, now_ms=NOW)
    assert not dead
    assert list(batch.transaction_id) == [f"t{i}" for i in range(50)]
    assert batch.amount.dtype == np.float64 and batch.event_time_ms.dtype == np.int64


@pytest.mark.parametrize("record, reason", [
    ({"amount": "lots"}, "'amount' must be a number"),
    ({"amount": -1}, "outside [0"),
    ({"amount": None}, "missing required field 'amount'"),
    ({"event_time": NOW // 1000}, "before 2000-01-01"),
    ({"event_time": NOW + 5 * 86_400_000}, "more than a day in the future"),
    ({"event_time": "yesterday"}, "is not ISO-8601"),
    ({"card_id": None}, "one of 'card_id', 'customer_id' or 'pan'"),
    ({"merchant_id": None}, "one of 'merchant_id' or 'terminal_id'"),
    ({"transaction_id": "x" * 200}, "longer than 128"),
    ({"lat": 91.0}, "'lat' = 91.0 is outside"),
    ({"pan": "12ab"}, "'pan' must be 12-19 digits"),
])
def test_each_problem_has_a_clear_reason(record, reason):
    rec = {**_good(1), **record}
    batch, dead = decode_transactions([orjson.dumps(rec)], tokenizer=TOK, now_ms=NOW, topic="tx",
                                      partitions=[3], offsets=[42])
    assert batch.n == 0
    assert len(dead) == 1 and reason in dead[0].error
    assert (dead[0].topic, dead[0].partition, dead[0].offset) == ("tx", 3, 42)


def test_an_empty_batch_decodes_to_an_empty_batch():
    for fast in (True, False):
        batch, dead = decode_transactions([], tokenizer=TOK, now_ms=NOW, partitions=[], offsets=[], fast=fast)
        assert batch.n == 0 and not dead and batch.transaction_id.dtype == object


def test_oversized_and_null_messages():
    batch, dead = decode_transactions([None, b"{" + b" " * 70_000 + b"}"], tokenizer=TOK, now_ms=NOW)
    assert batch.n == 0
    assert ["empty message" in dead[0].error, "oversized" in dead[1].error] == [True, True]


def test_pan_is_tokenized_and_masked_in_dead_letters():
    ok = {**{k: v for k, v in _good(1).items() if k != "card_id"}, "pan": "4111 1111 1111 1111"}
    bad = {"transaction_id": "b", "pan": PAN, "amount": "x"}
    batch, dead = decode_transactions([orjson.dumps(ok), orjson.dumps(bad)], tokenizer=TOK, now_ms=NOW)
    assert batch.card_id[0] == TOK.token(PAN) and batch.card_id[0].startswith("tok_")
    assert PAN.encode() not in dead[0].payload and TOK.token(PAN).encode() in dead[0].payload


def test_card_numbers_found_by_arrow_are_the_ones_python_finds():
    import pyarrow as pa

    from riskstream.schemas.pan import tokenize_pans

    ids = np.array(["card_1", PAN, "", "12345", "4111111111111112", PAN], dtype=object)
    arrow_ids = pa.array([v or None for v in ids], pa.large_string())
    by_python, by_arrow = tokenize_pans(ids, TOK), tokenize_pans(ids, TOK, arrow_ids)
    assert by_arrow.tolist() == by_python.tolist() == ["card_1", TOK.token(PAN), "", "12345", "4111111111111112",
                                                       TOK.token(PAN)]
    plain = np.array(["card_1", "12345"], dtype=object)
    assert tokenize_pans(plain, TOK, pa.array(list(plain))) is plain  # none: the column itself


def test_tokens_depend_on_the_key():
    assert PanTokenizer(b"a" * 32).token(PAN) != PanTokenizer(b"b" * 32).token(PAN)
    assert luhn_valid(PAN) and not luhn_valid("4111111111111112")


def test_other_streams_validate_rows():
    recs = [
        (orjson.dumps({"event_id": "t1", "label": "chargeback", "label_time": NOW}), 0, 1),
        (orjson.dumps({"event_id": "t2", "label": "maybe", "label_time": NOW}), 0, 2),
    ]
    rows, dead = decode_rows(STREAMS["labels"].validate_row, recs, tokenizer=TOK, topic="labels", now_ms=NOW)
    assert rows[0]["is_positive"] == 1 and rows[0]["stream"] == "transactions"
    assert len(dead) == 1 and "'label' must be one of" in dead[0].error and dead[0].offset == 2


def test_kept_json_documents_are_exactly_what_orjson_writes():
    records = [{"transaction_id": f"t{i}", "amount": i / 7, "note": "line\nbreak \u00e9\u2028" * (i % 3),
                "tags": [i, None, True]} for i in range(25)]
    expected = [orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in records]
    # chunk 4 puts chunk boundaries inside the list and a partial chunk at its end
    assert json_documents(iter(records), chunk=4, option=orjson.OPT_SORT_KEYS) == expected
    assert json_documents(records) == [orjson.dumps(r) for r in records]
    assert json_documents([]) == []
    with pytest.raises(ValueError, match="newlines"):
        json_documents(records, option=orjson.OPT_INDENT_2)


def test_constant_column_holds_one_value_per_row_and_can_be_changed_per_row() -> None:
    column = constant_column(4, "approve")
    assert column.dtype == object and column.tolist() == ["approve"] * 4
    column[[1, 3]] = "review"
    assert column.tolist() == ["approve", "review", "approve", "review"]
    assert constant_column(0, "").tolist() == []


def test_a_timestamp_is_not_taken_for_a_card_number():
    """13-digit epoch milliseconds pass the Luhn check one time in ten; masking them corrupted
    dead letters (found by the hostile-input fuzzer). Real card numbers still are masked."""
    from riskstream.schemas.pan import PanTokenizer, looks_like_pan, luhn_valid

    stamps = [str(1_796_440_609_000 + i) for i in range(2000)]
    assert sum(map(luhn_valid, stamps)) > 100
    assert not any(map(looks_like_pan, stamps))
    for card in ("4111111111111111", "5500005555555559", "378282246310005", "6011111111111117", "4222222222222"):
        assert looks_like_pan(card), card
    masked = PanTokenizer(b"k" * 32).mask(b'{"event_time": 1796440609438, "pan": "4111111111111111"}')
    assert b"1796440609438" in masked and b"4111111111111111" not in masked


def test_from_columns_blanks_missing_text_and_spells_out_numbers():
    """Text columns (Parquet, CSV) keep their values with blanks for the missing, NaN included
    (a CSV's empty cell); numbers given as ids become their text."""
    import numpy as np

    from riskstream.schemas.transactions import TransactionBatch

    batch = TransactionBatch.from_columns({
        "transaction_id": np.array(["t1", None, "t3"], dtype=object), "event_time": [1, 2, 3],
        "amount": [1.0, 2.0, 3.0], "card_id": [17, 18, None], "merchant_id": ["m1", float("nan"), "m3"]})
    assert batch.transaction_id.tolist() == ["t1", "", "t3"]
    assert batch.card_id.tolist() == ["17", "18", ""]
    assert batch.merchant_id.tolist() == ["m1", "", "m3"]
    assert batch.optional["country"].tolist() == ["", "", ""]
