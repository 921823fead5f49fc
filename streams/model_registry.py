"""Fraud model versions kept for promotion and rollback.

Redis holds each retrained tree version a worker trained: its LightGBM text and what it was
trained on (``register``), and the history of which model decided (``note_champion``). Which
model decides is said on the control topic under ``fraud_model`` (``riskstream models
promote|rollback``, audited and, with approval required, waiting for a second person like any
rule change); every worker reads it there, loads the version's text from here, and pins it
(``detectors.champion``). ``online`` is the online logistic regression, ``auto`` hands the
choice back to the comparisons on settled decisions.

Keys: ``rs:model:fraud:meta`` (hash version -> JSON), ``rs:model:fraud:body:<version>`` (the
model text), ``rs:model:fraud:champions`` (list, newest first). The newest ``KEEP`` versions
are kept, and any version that decided within the last ``KEEP`` changes of champion.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from riskstream.detectors.champion import AUTO, ONLINE

PREFIX = "rs:model:fraud"
KEEP = 30


class ModelRegistry:
    def __init__(self, redis_client, prefix: str = PREFIX):
        self.redis = redis_client
        self.meta_key, self.champions_key = f"{prefix}:meta", f"{prefix}:champions"
        self.body_prefix = f"{prefix}:body:"

    # ----- versions -----------------------------------------------------------------------
    def register(self, version: dict[str, Any]) -> None:
        """A trained version: ``version["model"]`` is its LightGBM text, the rest what it was
        trained on (stored as they are)."""
        meta = {k: v for k, v in version.items() if k != "model"} | {"registered_at": time.time()}
        pipe = self.redis.pipeline()
        pipe.set(self.body_prefix + version["version"], version["model"])
        pipe.hset(self.meta_key, version["version"], orjson.dumps(meta))
        pipe.execute()
        self._prune()

    def versions(self) -> list[dict[str, Any]]:
        """Every kept version, oldest first."""
        rows = [orjson.loads(v) for v in self.redis.hgetall(self.meta_key).values()]
        return sorted(rows, key=lambda r: (r.get("trained_at_ms") or 0, r["registered_at"]))

    def get(self, version: str) -> dict[str, Any] | None:
        raw = self.redis.hget(self.meta_key, version)
        return orjson.loads(raw) if raw else None

    def model_text(self, version: str) -> str | None:
        raw = self.redis.get(self.body_prefix + version)
        return raw.decode() if raw is not None else None

    def _prune(self) -> None:
        versions = self.versions()
        recent = {c["version"] for c in self.champions()}
        for old in versions[:max(0, len(versions) - KEEP)]:
            if old["version"] not in recent:
                self.redis.hdel(self.meta_key, old["version"])
                self.redis.delete(self.body_prefix + old["version"])

    # ----- which model decided ----------------------------------------------------------------
    def note_champion(self, version: str, how: str, worker: str) -> bool:
        """Record that ``version`` decides now (``how``: "auto" or "pinned"), unless it
        already was the newest entry; True when recorded."""
        newest = self.champions(1)
        if newest and newest[0]["version"] == version and newest[0]["how"] == how:
            return False
        self.redis.lpush(self.champions_key, orjson.dumps({"version": version, "how": how, "worker": worker,
                                                           "at": time.time()}))
        self.redis.ltrim(self.champions_key, 0, KEEP - 1)
        return True

    def champions(self, n: int = KEEP) -> list[dict[str, Any]]:
        """Which model decided, newest first."""
        return [orjson.loads(v) for v in self.redis.lrange(self.champions_key, 0, n - 1)]

    def previous_champion(self) -> str | None:
        """The model that decided before the one deciding now (what a rollback returns to)."""
        history = self.champions()
        if not history:
            return None
        now = history[0]["version"]
        return next((c["version"] for c in history[1:] if c["version"] != now), None)


def online_version_family(version: str) -> str:
    """``online`` for the online logistic regression's versions, else the version itself."""
    return ONLINE if version.startswith("fraud-") else version


def sync_registry(registry: ModelRegistry, models, worker: str) -> None:
    """What a worker tells the registry between batches: its new tree versions and which model
    decides now."""
    if models is None:
        return
    for version in models.take_new_versions():
        registry.register(version)
    if models.proven or models.deciding != ONLINE:
        registry.note_champion(online_version_family(models.version), "pinned" if models.pinned else AUTO, worker)
