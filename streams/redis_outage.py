"""Deciding through a Redis outage: credit lines, early-warning state and limit controls.

Redis holds what every worker shares: credit lines (reserved atomically per batch), the
early-warning watch of each line, and the limit controls that transaction services read.
When it hangs or goes away, decisions must not wait for it (an operator saw a frozen Valkey
stop every decision for 30 s). So the hot path reaches Redis through a :class:`RedisGuard`:

- a call that fails or times out (``RISKSTREAM_REDIS_TIMEOUT_MS``) marks Redis down; while it
  is down calls fail at once with :class:`RedisUnavailable`, and a background thread pings it
  until it answers again;
- a credit check that cannot run is decided under the stream's outage policy
  (``RISKSTREAM_REDIS_OUTAGE_POLICY``): ``open`` lets the decision stand and reserves the
  amount when Redis is back, ``closed`` declines (a card authorisation) or refers (a loan),
  and either way the decision's reasons say so;
- limit controls wait in order in the publisher and reach Redis when it returns (the
  ``limits`` topic has them at once);
- early-warning observations of the outage are skipped and counted: the watch state is a
  read-modify-write that cannot be replayed blind.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Sequence, TypeVar

log = logging.getLogger("riskstream.redis")

T = TypeVar("T")


class RedisUnavailable(RuntimeError):
    """Redis did not answer in time, or is known to be down: decide without it."""


class RedisGuard:
    """Whether Redis is up, learned from the calls themselves; a probe thread while it is down."""

    def __init__(self, client, probe_interval_s: float = 0.5):
        self.client = client
        self.probe_interval_s = probe_interval_s
        self.down_since: float | None = None
        self.outages = 0
        self.outage_seconds = 0.0
        self._lock = threading.Lock()

    @property
    def up(self) -> bool:
        return self.down_since is None

    def call(self, fn: Callable[..., T], *args, **kwargs) -> T:
        import redis

        if self.down_since is not None:
            raise RedisUnavailable(f"Redis down for {time.monotonic() - self.down_since:.1f}s")
        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self._mark_down(exc)
            raise RedisUnavailable(str(exc)) from exc

    def _mark_down(self, exc: Exception) -> None:
        with self._lock:
            if self.down_since is not None:
                return
            self.down_since = time.monotonic()
            self.outages += 1
        log.error("Redis unavailable (%s): deciding under the outage policy until it answers again", exc)
        threading.Thread(target=self._probe, daemon=True, name="redis-probe").start()

    def _probe(self) -> None:
        while True:
            time.sleep(self.probe_interval_s)
            try:
                self.client.ping()
            except Exception:
                continue
            with self._lock:
                lasted = time.monotonic() - (self.down_since or time.monotonic())
                self.outage_seconds += lasted
                self.down_since = None
            log.warning("Redis is back after %.1fs", lasted)
            return


class GuardedLedger:
    """A :class:`~riskstream.streams.ledger.RedisLedger` behind a guard. The set of credit
    lines is the last one read while Redis is down; operations decided under the open policy
    wait here, in order, and are applied before anything else once Redis answers (each is
    applied once per event id, so a repeat is harmless)."""

    def __init__(self, ledger, guard: RedisGuard, max_deferred: int = 1_000_000):
        self.ledger = ledger
        self.guard = guard
        self.max_deferred = max_deferred
        self.deferred: list = []

    def known(self) -> set[str]:
        try:
            self._catch_up()
            return self.guard.call(self.ledger.known)
        except RedisUnavailable:
            return self.ledger._known

    def apply(self, ops: Sequence) -> list:
        self._catch_up()
        return self.guard.call(self.ledger.apply, ops)

    def state(self, lines):
        return self.guard.call(self.ledger.state, lines)

    def defer(self, ops: Sequence) -> None:
        if len(self.deferred) + len(ops) > self.max_deferred:
            raise RedisUnavailable(f"{len(self.deferred):,} ledger operations already wait for Redis")
        self.deferred.extend(ops)

    def _catch_up(self) -> None:
        if self.deferred and self.guard.up:
            ops, self.deferred = self.deferred, []
            try:
                self.guard.call(self.ledger.apply, ops)
            except RedisUnavailable:
                self.deferred = ops + self.deferred
                raise
            log.warning("applied %d ledger operations decided while Redis was down", len(ops))


class GuardedWatch:
    """Early-warning watch states behind a guard (``streams.early_warning``)."""

    def __init__(self, watch, guard: RedisGuard):
        self.watch, self.guard = watch, guard

    def load(self, lines):
        return self.guard.call(self.watch.load, lines)

    def save(self, states) -> None:
        self.guard.call(self.watch.save, states)
