"""The ClickHouse sink's writer on chDB: formats, idempotency, poison blocks."""

from __future__ import annotations

import time

import numpy as np
import orjson
import pytest

from riskstream.schemas.transactions import TransactionBatch
from riskstream.settings import Settings
from riskstream.sinks.clickhouse import SinkWriter, ensure_schema, open_client
from riskstream.streams.pipeline import ScoredBatch, transaction_arrow_blocks


@pytest.fixture
def writer(tmp_path):
    client = open_client(Settings(data_dir=tmp_path))
    ensure_schema(client)
    return SinkWriter(client)


def _scored(n: int, prefix: str = "t") -> ScoredBatch:
    now = int(time.time() * 1000)
    batch = TransactionBatch.from_columns({
        "transaction_id": [f"{prefix}{i}" for i in range(n)], "event_time": [now - i for i in range(n)],
        "card_id": [f"c{i % 3}" for i in range(n)], "merchant_id": ["m"] * n, "amount": [1.5 * i for i in range(n)],
    })
    return ScoredBatch(batch, np.linspace(0, 1, n, dtype=np.float32), np.full(n, "approve", dtype=object),
                       [[] for _ in range(n)], "r1", "m1")


def _count(writer, sql):
    return writer.client.query(sql).result_rows[0][0]


def test_arrow_blocks_are_combined_and_idempotent(writer):
    blocks = transaction_arrow_blocks(_scored(9000), block_rows=4000)
    assert len(blocks) == 3
    writer.insert_blocks({"transactions@ArrowStream": blocks})
    writer.insert_blocks({"transactions@ArrowStream": blocks})  # a redelivery
    assert _count(writer, "SELECT count() FROM transactions FINAL") == 9000
    assert _count(writer, "SELECT max(amount) FROM transactions FINAL") == pytest.approx(1.5 * 8999)
    assert writer.rows_written["transactions"] == 18000


def test_blocks_of_one_schema_join_by_their_bytes_and_others_are_re_encoded():
    import pyarrow as pa

    from riskstream.sinks.clickhouse import join_ipc_streams, combine_blocks

    blocks = transaction_arrow_blocks(_scored(9000), block_rows=4000)
    whole = pa.concat_tables([pa.ipc.open_stream(b).read_all() for b in blocks])
    joined = join_ipc_streams(blocks)
    assert joined is not None and len(joined) < sum(map(len, blocks))  # one schema message, one end
    blob, rows = combine_blocks(blocks, "ArrowStream")
    assert rows == 9000 and pa.ipc.open_stream(blob).read_all().equals(whole)

    # A block from another version (a column more): the bytes do not join, the tables do.
    other = pa.table({"transaction_id": ["x"], "amount": [1.0], "extra": ["e"]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, other.schema) as w:
        w.write_table(other)
    mixed = [blocks[0], sink.getvalue().to_pybytes()]
    assert join_ipc_streams(mixed) is None
    blob, rows = combine_blocks(mixed, "ArrowStream")
    back = pa.ipc.open_stream(blob).read_all()
    assert rows == back.num_rows == 4001 and "extra" in back.column_names

    # Tables (an in-process writer's), alone or with streams, make the same one stream.
    tables = [pa.ipc.open_stream(b).read_all() for b in blocks]
    for parts in (tables, [blocks[0], *tables[1:]]):
        blob, rows = combine_blocks(parts, "ArrowStream")
        assert rows == 9000 and pa.ipc.open_stream(blob).read_all().equals(whole)


def test_poison_blocks_are_dead_lettered_not_lost(writer):
    writer.insert_blocks({
        "transactions@ArrowStream": [b"not arrow at all"],
        "no_such_table": [b'{"a": 1}'],
        "decisions": [b'{"event_id": "x", "event_time": "not a time"}'],
    })
    errors = [r[0] for r in writer.client.query("SELECT error FROM dead_letters ORDER BY error").result_rows]
    assert len(errors) == 3
    assert any("unreadable ArrowStream" in e for e in errors)
    assert any("unknown table" in e for e in errors)
    assert any("ClickHouse rejected the block" in e for e in errors)


def test_json_rows(writer):
    rows = [orjson.dumps({"event_id": f"e{i}", "stream": "transactions", "label": "chargeback", "is_positive": 1,
                          "label_time": time.time(), "entity_id": "c", "source": "t"}) for i in range(5)]
    writer.insert_blocks({"labels": [b"\n".join(rows[:3]), b"\n".join(rows[3:])]})
    assert _count(writer, "SELECT count() FROM labels FINAL") == 5



class _Message:
    def __init__(self, value: bytes):
        self._value = value

    def value(self) -> bytes:
        return self._value


def test_sink_window_gathers_until_its_time_or_size_is_up():
    from riskstream.sinks.clickhouse import SinkWindow

    window = SinkWindow(seconds=1.0, max_bytes=100)
    assert not window.due(now=50.0)  # nothing gathered: nothing to insert
    window.add([_Message(b"x" * 10)], now=10.0)
    window.add([_Message(b"y" * 10), _Message(b"z" * 10)], now=10.5)  # same window: keeps its start
    assert not window.due(now=10.9)
    assert window.due(now=11.0)
    assert [m.value()[:1] for m in window.take()] == [b"x", b"y", b"z"]
    assert not window.due(now=99.0) and window.bytes == 0

    window.add([_Message(b"b" * 60)], now=20.0)
    assert not window.due(now=20.1)
    window.add([_Message(b"c" * 60)], now=20.2)  # a backlog: full before its time
    assert window.due(now=20.2)


@pytest.mark.integration
def test_sink_commit_after_its_assignment_was_lost_names_what_it_wrote(stack):
    """A sink frozen past its session loses its assignment while it inserts. The commit that
    follows used to be ``commit()`` of the assignment's offsets, which raised ``_NO_OFFSET``
    and killed the sink; it now commits the offsets of the rows it wrote."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    from riskstream.sinks.clickhouse import commit_inserted
    from tests.conftest import produce

    topic = stack.topic("alerts")
    produce(stack, "alerts", [(b"k", f"alert {i}".encode()) for i in range(20)])
    consumer = Consumer({**stack.kafka_client_config(), "group.id": "lost-assignment", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "session.timeout.ms": stack.session_timeout_ms})
    consumer.subscribe([topic])
    msgs: list = []
    deadline = time.monotonic() + 60
    while len(msgs) < 20 and time.monotonic() < deadline:
        msgs += [m for m in consumer.consume(20, 0.5) if m.error() is None]
    assert len(msgs) == 20
    consumer.unassign()  # what librdkafka does when the session is found expired
    with pytest.raises(KafkaException, match="NO_OFFSET"):
        consumer.commit(asynchronous=False)  # the old commit, reproduced
    said: list[str] = []
    commit_inserted(consumer, msgs, said.append)
    ends: dict[int, int] = {}
    for m in msgs:
        ends[m.partition()] = max(ends.get(m.partition(), 0), m.offset() + 1)
    committed = consumer.committed([TopicPartition(topic, p) for p in ends], timeout=15)
    consumer.close()
    assert {tp.partition: tp.offset for tp in committed} == ends, said
