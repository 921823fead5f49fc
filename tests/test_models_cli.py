"""`riskstream models list|promote|rollback` against a running worker: a registered tree
version decides once promoted, the online model once promoted back, the trees again after a
rollback; every change is on the control topic and in the audit table."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import orjson
import pytest

from tests.conftest import produce, query, wait_for

pytestmark = pytest.mark.integration


def _cli(settings, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, RISKSTREAM_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
               RISKSTREAM_REDIS_URL=settings.redis_url.get_secret_value(), RISKSTREAM_DATA_DIR=str(settings.data_dir))
    return subprocess.run([sys.executable, "-m", "riskstream", "models", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def _send(settings, prefix: str, n: int = 40) -> None:
    now = int(time.time() * 1000)
    produce(settings, "transactions", [(f"card-{i % 5}".encode(), orjson.dumps(
        {"transaction_id": f"{prefix}-{i}", "event_time": now + i, "card_id": f"card-{i % 5}",
         "merchant_id": "m-1", "amount": 25.0 + i, "country": "NL", "channel": "pos"})) for i in range(n)])


def _versions(settings, prefix: str, n: int = 40) -> set[str]:
    rows = wait_for(lambda: query(settings, f"SELECT model_version FROM decisions FINAL WHERE event_id LIKE '{prefix}-%'"),
                    60, f"decisions of {prefix}", ok=lambda r: len(r) >= n)
    return {r["model_version"] for r in rows}


def test_a_promoted_version_decides_and_a_rollback_brings_back_the_one_before(stack, worker_factory):
    import lightgbm

    from riskstream.detectors.features import FEATURE_NAMES
    from riskstream.sinks.kafka import connect_redis
    from riskstream.streams.model_registry import ModelRegistry

    rng = np.random.default_rng(0)
    X = rng.random((400, len(FEATURE_NAMES)))
    booster = lightgbm.train({"objective": "binary", "verbose": -1, "num_threads": 1},
                             lightgbm.Dataset(X, label=(X[:, 0] > 0.9).astype(int)), num_boost_round=5)
    ModelRegistry(connect_redis(stack)).register({"version": "gbdt-7-day20000", "model": booster.model_to_string(),
                                                  "trained_at_ms": 20000 * 86_400_000, "decisions": 400,
                                                  "frauds": 40, "negative_rate": 1.0})
    worker = worker_factory()
    _send(stack, "before")
    assert all(v.startswith("fraud-") for v in _versions(stack, "before"))

    unknown = _cli(stack, "promote", "gbdt-nope")
    assert unknown.returncode == 2 and "no version 'gbdt-nope'" in unknown.stderr
    done = _cli(stack, "promote", "gbdt-7-day20000", "--as", "alice", "--reason", "leads on AP")
    assert done.returncode == 0, done.stderr
    wait_for(lambda: "fraud model gbdt-7-day20000 in force" in worker.log_text(), 30, "the pin", worker)
    _send(stack, "pinned")
    assert _versions(stack, "pinned") == {"gbdt-7-day20000"}

    assert _cli(stack, "promote", "online", "--as", "alice").returncode == 0
    wait_for(lambda: "fraud model online in force" in worker.log_text(), 30, "the online model", worker)
    _send(stack, "online")
    assert all(v.startswith("fraud-") for v in _versions(stack, "online"))

    back = _cli(stack, "rollback", "--as", "bob")
    assert back.returncode == 0 and "rolling back to gbdt-7-day20000" in back.stdout, back.stdout + back.stderr
    wait_for(lambda: worker.log_text().count("fraud model gbdt-7-day20000 in force") == 2, 30, "the rollback", worker)
    _send(stack, "rolled-back")
    assert _versions(stack, "rolled-back") == {"gbdt-7-day20000"}

    listed = _cli(stack, "list")
    assert "gbdt-7-day20000" in listed.stdout and "<- decides" in listed.stdout, listed.stdout
    assert "Pinned to gbdt-7-day20000 by bob" in listed.stdout
    audit = wait_for(lambda: query(stack, "SELECT actor, version FROM audit FINAL WHERE subject = 'fraud model' "
                                          "ORDER BY at"), 30, "audit rows", ok=lambda r: len(r) >= 3)
    assert [(r["actor"], r["version"]) for r in audit] == [("alice", "gbdt-7-day20000"), ("alice", "online"),
                                                          ("bob", "gbdt-7-day20000")]
