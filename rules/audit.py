"""Who changed what, when and from where: the ``audit`` table, and changes that wait for a
second person (maker-checker).

Every publication of a rule set, a market-risk limit set or a credit policy, every approval
or rejection of one, the thresholds a worker starts with and each fraud or credit model
taking over from its cold start write an audit row: the actor (``--as``, else
``RISKSTREAM_OPERATOR``, else the login name), the action, what changed (its version, the
SHA-256 of its text, and a unified diff against the one in force), when, and from where (host,
process, command). Rows travel on the ``sink`` topic like every other table's, so they reach
ClickHouse through the sink, and wait on the broker while it is away.

With ``RISKSTREAM_REQUIRE_APPROVAL=true``, ``publish`` only proposes: the change waits on the
control topic under ``pending:<id>`` (workers ignore it) until ``riskstream rules approve ID``
by someone else publishes it, or ``reject ID`` drops it (``decided:<id>``).
"""

from __future__ import annotations

import difflib
import getpass
import hashlib
import os
import socket
import sys
import time
import uuid
from typing import Any

import orjson

MAX_DIFF_CHARS = 20_000


def actor(settings: Any, given: str | None = None) -> str:
    return given or getattr(settings, "operator", "") or getpass.getuser()


def origin() -> str:
    command = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv[:4]))
    return f"{socket.gethostname()} pid {os.getpid()}: {command}"[:500]


def change_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def diff(before: str, after: str, subject: str) -> str:
    lines = difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                 f"{subject} in force", f"{subject} new", n=2)
    text = "".join(lines)
    return text if len(text) <= MAX_DIFF_CHARS else text[:MAX_DIFF_CHARS] + "\n... (diff cut)\n"


def audit_row(action: str, subject: str, version: str, who: str, *, text: str = "", before: str | None = None,
              change: str = "", detail: str = "") -> dict[str, Any]:
    return {
        "audit_id": f"{change or change_id()}:{action}", "change_id": change, "at": time.time(), "actor": who,
        "action": action, "subject": subject, "version": version,
        "content_sha256": hashlib.sha256(text.encode()).hexdigest() if text else "",
        "diff": diff(before, text, subject) if before is not None and text else "",
        "origin": origin(), "detail": detail[:2000],
    }


def write_audit(settings: Any, rows: list[dict[str, Any]], producer=None, timeout: float = 10.0) -> None:
    """Audit rows to the ``sink`` topic (table ``audit``); waits for the broker's ack when it
    owns the producer."""
    if not rows:
        return
    from confluent_kafka import Producer

    own = producer is None
    producer = producer or Producer({**settings.kafka_client_config(), "acks": "all", "enable.idempotence": False})
    errors: list[Any] = []
    producer.produce(settings.topic("sink"), key=b"audit", value=b"\n".join(orjson.dumps(r) for r in rows),
                     on_delivery=lambda err, msg: errors.append(err) if err else None)
    if own and (producer.flush(timeout) or errors):
        raise RuntimeError(f"audit rows not confirmed by Kafka: {errors[0] if errors else 'timed out'}")
