"""OutputPublisher's produce path: every message is counted for its batch's acknowledgement,
including those that waited for room in a full local queue."""

from __future__ import annotations

from riskstream.settings import Settings
from riskstream.sinks.kafka import OutputPublisher


class _FullOnceProducer:
    """Refuses every third message once (a full queue), then takes it after a poll."""

    def __init__(self):
        self.accepted: list[tuple[str, bytes, bytes]] = []
        self.callbacks = []
        self.polls = 0
        self._refuse_next = False
        self._calls = 0

    def produce(self, topic, value=None, key=None, on_delivery=None):
        self._calls += 1
        if self._calls % 3 == 0 and not self._refuse_next:
            self._refuse_next = True
            raise BufferError("Local: Queue full")
        self._refuse_next = False
        self.accepted.append((topic, key, value))
        self.callbacks.append(on_delivery)

    def poll(self, timeout=0):
        self.polls += 1
        return 0


def test_every_message_counts_towards_its_batch_even_after_a_full_queue(tmp_path):
    producer = _FullOnceProducer()
    publisher = OutputPublisher(Settings(data_dir=tmp_path), producer=producer)
    delivery = publisher.begin_batch()
    messages = [(f"k{i}".encode(), f"v{i}".encode()) for i in range(10)]
    publisher.send("decisions", messages)
    publisher.end_batch()

    assert [(k, v) for _, k, v in producer.accepted] == messages  # none lost, order kept
    assert delivery.produced == 10 and publisher.counts["decisions"] == 10
    assert not delivery.acked
    for callback in producer.callbacks:  # the broker acknowledges them all
        callback(None, None)
    assert delivery.acked == delivery.produced
