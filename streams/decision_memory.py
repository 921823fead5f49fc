"""A transaction read again gets the decision it was given the first time.

At least once, a batch whose offsets were not committed before a worker died is read again by
the partition's next owner. Its features have moved on meanwhile (the first pass folded the
batch in, or a later checkpoint did), so scoring it again can land on the other side of a
threshold: `riskstream chaos` saw 29 of 54 repeated decisions change. The decisions of each
batch are therefore kept in Redis, shared by every worker, keyed by where the records sit in
the input topic, until that is well behind: a record read again at the same partition and
offset is given the same decision, score and reasons (its outputs are encoded again, so the
decision message, table row and decision id repeat unchanged).

One sorted set per input partition (``rs:decided:<topic>:<partition>``), scored by the
batch's last offset, each member a batch's decisions; the newest ``keep`` batches stay.
Cost: one pipelined call to read and one to write per batch. While Redis is unreachable the
memory is skipped (a repeat in that window is decided afresh).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from riskstream.streams.redis_outage import RedisUnavailable

DECISIONS = ("approve", "step_up", "review", "decline")


class DecisionMemory:
    def __init__(self, redis_client, guard, prefix: str = "rs:decided:", keep: int = 400):
        self.redis, self.guard = redis_client, guard
        self.prefix, self.keep = prefix, keep
        self.recalled = 0  # decisions given again to records read again

    def _key(self, topic: str, partition: int) -> str:
        return f"{self.prefix}{topic}:{partition}"

    def apply(self, topic: str, scored) -> None:
        """Give rows decided before their earlier decision; remember this batch's."""
        if scored is None or not scored.n:
            return
        try:
            self.guard.call(self._recall, topic, scored)
            self.guard.call(self._remember, topic, scored)
        except RedisUnavailable:
            return

    def _recall(self, topic: str, scored) -> None:
        b = scored.batch
        parts = np.unique(b.partition).tolist()
        pipe = self.redis.pipeline(transaction=False)
        for p in parts:
            # Batches are scored by their last offset: only one read before that ends at or
            # after this batch's first offset can hold any of its records (none, normally).
            pipe.zrangebyscore(self._key(topic, p), int(b.offset[b.partition == p].min()), "+inf")
        for p, members in zip(parts, pipe.execute()):
            if not members:
                continue
            rows = np.flatnonzero(b.partition == p)
            where = {int(o): int(i) for o, i in zip(b.offset[rows].tolist(), rows.tolist())}
            for member in members:
                self._give_back(orjson.loads(member), where, scored)

    def _give_back(self, earlier: dict[str, Any], where: dict[int, int], scored) -> None:
        lo, hi = earlier["o"][0], earlier["o"][-1]
        if not where or hi < min(where) or lo > max(where):
            return
        reasons = earlier["r"]
        for k, (offset, code, score) in enumerate(zip(earlier["o"], earlier["d"], earlier["s"])):
            i = where.get(offset)
            if i is None:
                continue
            scored.decision[i] = DECISIONS[code]
            scored.score[i] = score
            scored.reasons[i] = reasons.get(str(k), [])
            self.recalled += 1

    def _remember(self, topic: str, scored) -> None:
        b = scored.batch
        codes = {name: k for k, name in enumerate(DECISIONS)}
        pipe = self.redis.pipeline(transaction=False)
        for p in np.unique(b.partition).tolist():
            rows = np.flatnonzero(b.partition == p)
            rows = rows[np.argsort(b.offset[rows], kind="stable")]
            member = orjson.dumps({
                "o": b.offset[rows].tolist(),
                "d": [codes[d] for d in scored.decision[rows].tolist()],
                "s": scored.score[rows].astype(float).round(6).tolist(),
                "r": {str(k): list(scored.reasons[i]) for k, i in enumerate(rows.tolist()) if scored.reasons[i]},
            })
            key = self._key(topic, p)
            pipe.zadd(key, {member: int(b.offset[rows[-1]])})
            pipe.zremrangebyrank(key, 0, -self.keep - 1)
        pipe.execute()
