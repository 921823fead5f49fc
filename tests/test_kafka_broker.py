"""Apache Kafka as the embedded broker: what the default broker cannot do (offsets by
timestamp, topic configurations), and a clear message where Java or Maven is missing."""

from __future__ import annotations

import time

import pytest

from riskstream.settings import ConfigError, Settings
from riskstream.stack import EmbeddedStack


@pytest.mark.integration
def test_the_kafka_broker_answers_offsets_by_timestamp_and_topic_configs(tmp_path):
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, ConfigResource

    settings = Settings(data_dir=tmp_path / "rs", broker="kafka")
    with EmbeddedStack(settings, with_sink=False):
        servers = settings.stack_state()["kafka"]
        topic = settings.topic("transactions")
        admin = AdminClient({"bootstrap.servers": servers})
        assert len(admin.list_topics(timeout=10).topics[settings.topic("market")].partitions) == 1
        config = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)])
        described = list(config.values())[0].result(10)
        assert described["cleanup.policy"].value == "delete"
        producer = Producer({"bootstrap.servers": servers})
        t0 = int(time.time() * 1000)
        for k in range(10):
            producer.produce(topic, value=f"m{k}".encode(), partition=0, timestamp=t0 + k * 1000)
        assert producer.flush(10) == 0
        consumer = Consumer({"bootstrap.servers": servers, "group.id": "ts"})
        found = consumer.offsets_for_times([TopicPartition(topic, 0, t0 + 4500)], timeout=10)
        consumer.close()
        assert found[0].offset == 5  # the first message at or after that time


def test_without_java_or_maven_the_message_says_what_to_install(tmp_path, monkeypatch):
    from riskstream import kafka_broker

    monkeypatch.setattr(kafka_broker, "cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(kafka_broker.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError) as exc:
        kafka_broker.classpath()
    text = str(exc.value)
    assert "Maven (`mvn`)" in text and "apt install maven" in text and "leave RISKSTREAM_BROKER unset" in text
    with pytest.raises(ConfigError) as exc:
        kafka_broker.java()
    assert "Java 17 or newer" in str(exc.value)


def test_cluster_ids_never_start_with_a_dash():
    """The storage tool reads an id that starts with "-" as an option and refuses to format."""
    from riskstream.kafka_broker import _cluster_id

    ids = [_cluster_id() for _ in range(2000)]  # ~31 of them would start with "-" otherwise
    assert not any(i.startswith("-") for i in ids)
    assert all(len(i) == 22 for i in ids)
