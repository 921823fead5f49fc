"""`riskstream replay` online: every row a JSON message on its stream's topic, keyed like live
producers key it, with labels interleaved by time, so the running workers decide it exactly as
they would live traffic."""

from __future__ import annotations

import time

import numpy as np
import orjson

from riskstream.schemas.registry import STREAMS
from riskstream.settings import Settings
from riskstream.streams.offline import ReplaySummary
from riskstream.streams.progress import Progress
from riskstream.streams.reading import ReplayError, ReplayInput


def message_order(data: ReplayInput) -> tuple[np.ndarray, np.ndarray]:
    """(is_label, index) of every message in time order; at equal times the event goes first,
    so a label never precedes the transaction it is about."""
    n = data.n
    label_time = data.labels.get("label_time", np.zeros(0, dtype=np.int64))
    times = np.concatenate([data.times_ms, label_time])
    order = np.argsort(times, kind="stable")
    is_label = order >= n
    return is_label, np.where(is_label, order - n, order)


def replay_online(data: ReplayInput, settings: Settings, rate: float | None = None, producer=None,
                  progress: Progress | None = None) -> ReplaySummary:
    """Produce every row (and label) to its topic in time order; ``rate`` paces open loop."""
    from riskstream.stack import ensure_topics

    conf = settings.kafka_client_config()  # ConfigError when there is no Kafka: says `riskstream stack up`
    if producer is None:
        from confluent_kafka import Producer

        ensure_topics(settings)
        producer = Producer({**conf, "linger.ms": 5, "compression.type": "lz4",
                             "queue.buffering.max.messages": 1_000_000, "batch.num.messages": 10_000})
    spec = STREAMS[data.stream]
    topic, label_topic = settings.topic(data.stream), settings.topic("labels")
    names = [c for c in data.columns]
    key_col = next((c for c in spec.key if c in data.columns), None)
    failed: list[str] = []

    def on_delivery(err, msg) -> None:
        if err is not None:
            failed.append(f"{msg.topic()}: {err}")

    columns = [data.columns[c].tolist() if hasattr(data.columns[c], "tolist") else list(data.columns[c])
               for c in names]
    for i, raw in data.unreadable_times.items():
        columns[names.index(spec.time_column)][i] = raw
    keys = columns[names.index(key_col)] if key_col else None
    label_cols = list(data.labels)
    label_values = [data.labels[c].tolist() for c in label_cols]
    label_keys = data.labels["entity_id"].tolist() if data.labels else []
    is_label, index = message_order(data)
    total = len(index)
    progress = progress or Progress(total, "messages")
    dumps = orjson.dumps
    t0 = time.perf_counter()
    produced = labels = 0
    for is_lab, i in zip(is_label.tolist(), index.tolist()):
        if is_lab:
            t, key = label_topic, label_keys[i]
            value = dumps(dict(zip(label_cols, (col[i] for col in label_values))))
            labels += 1
        else:
            t, key = topic, keys[i] if keys is not None else None
            value = dumps({c: col[i] for c, col in zip(names, columns)}, default=str)
        key_bytes = None if key is None else str(key).encode()
        while True:
            try:
                producer.produce(t, value=value, key=key_bytes, on_delivery=on_delivery)
                break
            except BufferError:  # librdkafka's queue is full: let it drain
                producer.poll(0.05)
        produced += 1
        if rate:
            ahead = t0 + produced / rate - time.perf_counter()
            if ahead > 0.002:
                producer.poll(0)
                time.sleep(ahead)
        if produced % 10_000 == 0:
            producer.poll(0)
            progress.update(produced)
    remaining = producer.flush(60)
    progress.update(produced)
    if remaining or failed:
        raise ReplayError(f"the broker did not acknowledge {remaining + len(failed)} message(s) "
                          f"({'; '.join(failed[:3]) or 'flush timed out'}); the replay is incomplete. "
                          "Check the broker (`riskstream stack status`) and run again: the engine's "
                          "tables are keyed by event, so replaying twice stores each event once.")
    return ReplaySummary(data.stream, produced - labels, labels, 0, time.perf_counter() - t0)


