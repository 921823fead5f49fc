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
        pipe.execute()
        return size

    def load_partitions(self, partitions: set[int]) -> int:
        loaded = 0
        for p in sorted(partitions):
            blob = self.redis.get(f"{self.prefix}features:{p}")
            if blob:
                self.driver.features.restore(blob)
                loaded += 1
        return loaded

    def drop_partitions(self, partitions: set[int]) -> None:
        self.driver.features.drop_partitions(partitions)

    def save_market(self) -> int:
        """The market processor's state (every portfolio and instrument), by the worker that
        owns the market partition."""
        blob = self.driver.market.checkpoint()
        self.redis.set(f"{self.prefix}market", blob)
        return len(blob)

    def load_market(self) -> bool:
        blob = self.redis.get(f"{self.prefix}market")
        if not blob:
            return False
        self.driver.market.restore(blob)
        return True

    def save_models(self) -> int:
        # Only riskstream reads this back (pickled River models; see detectors.base).
        blob = pickle.dumps(self.driver.checkpoint(skip=("market",)), protocol=5)
        self.redis.set(f"{self.prefix}driver", blob)
        return len(blob)

    def load_models(self) -> bool:
        blob = self.redis.get(f"{self.prefix}driver")
        if not blob:
            return False
        self.driver.restore(pickle.loads(blob))
        return True
