"""Publishing rule sets and market-risk limit sets to running workers, and their history.

Both go through the compacted Kafka control topic ``rules``, keyed by what they are
(``ruleset`` or ``limits``): the newest record of a key is the set in force, and reading the
topic from the beginning gives the history (until compaction drops old versions). Every
worker reads the whole topic at start-up and hot-reloads on every new record; a set that
does not validate is refused here, and a worker keeps its current set if one still fails.The command is ``riskstream rules`` (``riskstream.commands.rules``).
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from riskstream.rules.audit import actor, audit_row, change_id, write_audit
from riskstream.rules.language import validate_rule_set

RULES_TOPIC = "rules"
RULESET_KEY = b"ruleset"
LIMITS_KEY = b"limits"
CREDIT_KEY = b"credit_policy"
FRAUD_MODEL_KEY = b"fraud_model"  # which fraud model decides (streams.model_registry)
PENDING_PREFIX = b"pending:"  # a proposed change waiting for approval; workers ignore it
DECIDED_PREFIX = b"decided:"  # its approval or rejection
SUBJECTS = {RULESET_KEY: "rule set", LIMITS_KEY: "limit set", CREDIT_KEY: "credit policy",
            FRAUD_MODEL_KEY: "fraud model"}


# ======================================================================================
# Kafka control topic
# ======================================================================================
def _list_files_of(rule_set_text: str, base_dir: Path | None) -> dict[str, str]:
    """Content of every `file:` list, so a published rule set is self-contained: the worker
    reading it does not have the publisher's files."""
    import yaml

    data = yaml.safe_load(rule_set_text) or {}
    out = {}
    for spec in (data.get("lists") or {}).values():
        if isinstance(spec, dict) and "file" in spec:
            path = Path(str(spec["file"]))
            full = path if path.is_absolute() or base_dir is None else base_dir / path
            out[str(spec["file"])] = full.read_text()
    return out


def ensure_rules_topic(settings: Any, timeout: float = 10.0) -> None:
    """Create the control topic (1 partition, compacted) unless it exists."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(settings.kafka_client_config())
    topic = settings.topic(RULES_TOPIC)
    if topic in admin.list_topics(timeout=timeout).topics:
        return
    futures = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=settings.topic_replication,
                                            config={"cleanup.policy": "compact"})])
    try:
        futures[topic].result(timeout)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise


def publish_rule_set(settings: Any, text: str, source: str, *, base_dir: str | Path | None = None,
                     available_columns: Any = None, timeout: float = 10.0, who: str | None = None) -> dict[str, Any]:
    """Validate and publish a rule set; return the published record.

    With ``available_columns`` the column names are checked too (the worker checks them
    again when it compiles, and keeps its current set if they do not fit). Raises :class:`RuleSetError` (nothing published) when the set does not validate, and
    ``RuntimeError`` when the broker did not confirm the write."""
    base = Path(base_dir) if base_dir else None
    rule_set = validate_rule_set(text, source, available_columns=available_columns, base_dir=base)
    return _publish(settings, RULESET_KEY, {"version": rule_set.version_tag, "source_name": source, "text": text,
                                            "list_files": _list_files_of(text, base)}, timeout, who)


def publish_limit_set(settings: Any, text: str, source: str, timeout: float = 10.0,
                      who: str | None = None) -> dict[str, Any]:
    """Validate and publish a market-risk limit set (``rules.limits``); raises
    ``LimitSetError`` (nothing published) when it does not validate."""
    from riskstream.rules.limits import load_limits

    return _publish_validated(settings, LIMITS_KEY, text, source, load_limits, timeout, who)


def publish_credit_policy(settings: Any, text: str, source: str, timeout: float = 10.0,
                          who: str | None = None) -> dict[str, Any]:
    """Validate and publish a credit policy (``rules.credit_policy``); raises
    ``CreditPolicyError`` (nothing published) when it does not validate."""
    from riskstream.rules.credit_policy import load_credit_policy

    return _publish_validated(settings, CREDIT_KEY, text, source, load_credit_policy, timeout, who)


def publish_fraud_champion(settings: Any, version: str, reason: str = "", timeout: float = 10.0,
                           who: str | None = None) -> dict[str, Any]:
    """Which fraud model decides: a registered tree version, ``online`` or ``auto`` (checked
    against the registry by ``riskstream models``)."""
    text = f"champion: {version}\n" + (f"reason: {reason}\n" if reason else "")
    return _publish(settings, FRAUD_MODEL_KEY, {"version": version, "source_name": "riskstream models",
                                                "text": text}, timeout, who)


def _publish_validated(settings: Any, key: bytes, text: str, source: str, load, timeout: float,
                       who: str | None) -> dict[str, Any]:
    """``load`` (which raises on any error) first; then the text as it was validated."""
    version = load(text, source).version
    return _publish(settings, key, {"version": version, "source_name": source, "text": text}, timeout, who)


def _publish(settings: Any, key: bytes, record: dict[str, Any], timeout: float, who: str | None = None,
             approved: dict[str, Any] | None = None) -> dict[str, Any]:
    """One control record, with who published it and when, audited; waits for the broker's
    ack. With approval required (and not ``approved``, the pending record being approved),
    the record is proposed under ``pending:<id>`` instead, for someone else to approve."""
    who = actor(settings, who)
    record = {**record, "published_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "published_by": who, "kind": key.decode()}
    subject = SUBJECTS[key]
    in_force = rule_history(settings, timeout, key)
    before = in_force[-1].get("text", "") if in_force else ""
    if settings.require_approval and approved is None:
        record["change_id"] = change_id()
        _produce(settings, PENDING_PREFIX + record["change_id"].encode(), record, timeout)
        write_audit(settings, [audit_row("proposed", subject, record["version"], who, text=record["text"],
                                         before=before, change=record["change_id"],
                                         detail=f"from {record.get('source_name', '?')}; waits for approval")])
        record["pending"] = True
        return record
    if approved is not None:
        record.update(change_id=approved["change_id"], proposed_by=approved["published_by"], approved_by=who,
                      published_by=approved["published_by"])
    rows = [] if approved is None else [
        audit_row("approved", subject, record["version"], who, text=record["text"], change=record["change_id"],
                  detail=f"proposed by {approved['published_by']}")]
    _produce(settings, key, record, timeout)
    rows.append(audit_row("published", subject, record["version"], record["published_by"], text=record["text"],
                          before=before, change=record.get("change_id") or change_id(),
                          detail=f"from {record.get('source_name', '?')}"))
    write_audit(settings, rows)
    return record


def _produce(settings: Any, key: bytes, record: dict[str, Any], timeout: float) -> None:
    from confluent_kafka import Producer

    ensure_rules_topic(settings, timeout)
    producer = Producer({**settings.kafka_client_config(), "acks": "all", "enable.idempotence": False})
    delivered: list[Any] = []
    producer.produce(settings.topic(RULES_TOPIC), key=key, value=json.dumps(record).encode(),
                     on_delivery=lambda err, msg: delivered.append(err))
    remaining = producer.flush(timeout)
    if remaining or not delivered or delivered[0] is not None:
        raise RuntimeError(f"{key.decode()} {record.get('version', '')} not confirmed by Kafka: "
                           f"{delivered[0] if delivered else 'timed out'}")


# ======================================================================================
# Maker-checker
# ======================================================================================
class ApprovalError(RuntimeError):
    """A pending change that cannot be approved or rejected (unknown, decided, same person)."""


def pending_changes(settings: Any, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Proposed changes no one has approved or rejected yet, oldest first."""
    records = rule_history(settings, timeout, key=None)
    decided = {r["change_id"] for r in records if r.get("_key", "").startswith(DECIDED_PREFIX.decode())}
    return [r for r in records if r.get("_key", "").startswith(PENDING_PREFIX.decode())
            and r.get("change_id") not in decided]


def decide_change(settings: Any, change: str, approve: bool, who: str | None = None,
                  timeout: float = 10.0) -> dict[str, Any]:
    """Approve (validate again, publish, audit) or reject a pending change. The person who
    proposed it can do neither: that is the point of a second pair of eyes."""
    who = actor(settings, who)
    found = [r for r in pending_changes(settings, timeout) if r.get("change_id") == change]
    if not found:
        raise ApprovalError(f"no pending change {change!r} (see `riskstream rules pending`)")
    pending = found[-1]
    if pending["published_by"] == who:
        raise ApprovalError(f"{who} proposed change {change}; another person must approve or reject it")
    key = pending["kind"].encode()
    if approve:
        _validate_again(key, pending)
        record = {k: v for k, v in pending.items() if k in ("version", "source_name", "text", "list_files")}
        published = _publish(settings, key, record, timeout, who, approved=pending)
    else:
        published = pending
        write_audit(settings, [audit_row("rejected", SUBJECTS[key], pending["version"], who, text=pending["text"],
                                         change=change, detail=f"proposed by {pending['published_by']}")])
    _produce(settings, DECIDED_PREFIX + change.encode(),
             {"change_id": change, "decision": "approved" if approve else "rejected", "by": who,
              "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}, timeout)
    return published


def _validate_again(key: bytes, pending: dict[str, Any]) -> None:
    """The text as proposed must still load (the worker would refuse it otherwise)."""
    from riskstream.rules.credit_policy import load_credit_policy
    from riskstream.rules.limits import load_limits

    text, source = pending["text"], pending.get("source_name", "pending change")
    if key == RULESET_KEY:
        validate_rule_set(text, source, list_files=pending.get("list_files") or None)
    elif key == FRAUD_MODEL_KEY:
        return  # a version name, checked against the registry when it was proposed
    else:
        {LIMITS_KEY: load_limits, CREDIT_KEY: load_credit_policy}[key](text, source)


def rule_history(settings: Any, timeout: float = 10.0, key: bytes | None = RULESET_KEY) -> list[dict[str, Any]]:
    """Every record of ``key`` (rule sets, or ``LIMITS_KEY`` for limit sets; None: every
    record, its key in ``_key``) on the control topic, oldest first (read from the beginning)."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    topic = settings.topic(RULES_TOPIC)
    consumer = Consumer({
        **settings.kafka_client_config(),
        # assign() below, never subscribe(): no group join, so no session-timeout wait.
        "group.id": f"riskstream-rules-history-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            return []
        ends: dict[int, int] = {}
        starts: list[TopicPartition] = []
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            if high > low:
                ends[p] = high
                starts.append(TopicPartition(topic, p, low))
        if not starts:
            return []
        consumer.assign(starts)
        records: list[tuple[int, dict[str, Any]]] = []
        deadline = time.monotonic() + timeout
        while ends and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=0.5):
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        continue
                    raise RuntimeError(f"reading {topic}: {msg.error()}")
                if (key is None or msg.key() == key) and msg.value():
                    try:
                        value = json.loads(msg.value())
                    except ValueError:
                        value = {"version": "?", "error": "not JSON"}
                    value["offset"] = msg.offset()
                    value["_key"] = (msg.key() or b"").decode(errors="replace")
                    records.append((msg.timestamp()[1], value))
                if msg.offset() + 1 >= ends.get(msg.partition(), 0):
                    ends.pop(msg.partition(), None)
        if ends:
            raise RuntimeError(f"reading {topic}: timed out before the end of partitions {sorted(ends)}")
        return [v for _, v in sorted(records, key=lambda tv: (tv[0], tv[1]["offset"]))]
    finally:
        consumer.close()


def latest_rule_set(settings: Any, timeout: float = 10.0) -> dict[str, Any] | None:
    """The rule set record in force (the newest on the topic), or None."""
    history = rule_history(settings, timeout)
    return history[-1] if history else None




__all__ = ["publish_rule_set", "publish_limit_set", "rule_history", "latest_rule_set", "ensure_rules_topic",
           "pending_changes", "decide_change", "ApprovalError", "LIMITS_KEY", "RULESET_KEY"]
