"""Worker state in Redis, so it survives restarts and follows partitions.

Feature state is saved per Kafka partition (``snapshot({p})``) when a partition is revoked, at
shutdown and on a timer, and loaded when a partition is assigned. Model state (the fraud and
credit models, one per consumer group) and the labels still waiting for their event time are
saved the same way and restored at start-up. Market state (every portfolio and instrument) is
saved and loaded with the one partition of the market topic. Between two saves a crash loses at most that
interval of feature updates; features are decayed aggregates, so the effect fades, and no
decision or output is lost.
"""

from __future__ import annotations

import pickle

from riskstream.streams.driver import Driver


class StateStore:
    def __init__(self, driver: Driver, redis_client, group: str):
        self.driver = driver
        self.redis = redis_client
        self.prefix = f"rs:state:{group}:"

    def save_partitions(self, partitions: set[int]) -> int:
        if not partitions:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        size = 0
        for p in partitions:
            blob = self.driver.features.snapshot({p})
            size += len(blob)
            pipe.set(f"{self.prefix}features:{p}", blob)
            # the offset those features have folded in (streams.decision_memory)
            pipe.set(f"{self.prefix}folded:{p}", self.driver.folded.get(p, -1))
        pipe.execute()
        return size

    def load_partitions(self, partitions: set[int]) -> int:
        loaded = 0
        for p in sorted(partitions):
            blob, folded = self.redis.mget(f"{self.prefix}features:{p}", f"{self.prefix}folded:{p}")
            if blob:
                self.driver.features.restore(blob)
                loaded += 1
                if folded is not None and int(folded) >= 0:
                    self.driver.folded[p] = int(folded)
        return loaded

    def drop_partitions(self, partitions: set[int]) -> None:
        self.driver.features.drop_partitions(partitions)
        for p in partitions:
            self.driver.folded.pop(p, None)

    def save_market(self) -> int:
        """The market processor's state (every portfolio and instrument), by the worker that
        owns the market partition."""
        return self._save("market", self.driver.market.checkpoint())

    def load_market(self) -> bool:
        return self._load("market", self.driver.market.restore)

    def save_models(self) -> int:
        # Only riskstream reads this back (pickled River models; see detectors.base).
        return self._save("driver", pickle.dumps(self.driver.checkpoint(skip=("market",)), protocol=5))

    def load_models(self) -> bool:
        return self._load("driver", lambda blob: self.driver.restore(pickle.loads(blob)))

    def _save(self, name: str, blob: bytes) -> int:
        self.redis.set(f"{self.prefix}{name}", blob)
        return len(blob)

    def _load(self, name: str, restore) -> bool:
        blob = self.redis.get(f"{self.prefix}{name}")
        if not blob:
            return False
        restore(blob)
        return True
