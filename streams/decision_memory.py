"""A transaction seen before gets the decision it was given the first time, and counts once.

Two ways the same transaction comes again:

* a record read again: at least once, a batch whose offsets were not committed before a
  worker died is read again by the partition's next owner;
* an input duplicate: the transaction service sends the same transaction id twice, or a file
  is replayed into the topic.

Scoring it again would fold it into the features a second time and could land on the other
side of a threshold (`riskstream chaos` saw 29 of 54 repeated decisions change before this
memory existed). So every decision is remembered by transaction id, shared by every worker,
for ``dedup_window_hours``; the driver (``streams.driver``) looks each batch up first. A
transaction found there is given the same decision, score and reasons (its outputs are
encoded again: the decision message, table row and decision id repeat unchanged) and is not
scored or folded again, unless it is the same record read again at a partition offset the
restored feature state has not reached (then it is folded, for the features' sake, and still
given its first decision).

Layout: one Redis hash per input topic and hour of event time
(``rs:decided:<topic>:<hour>``), transaction id -> ``code|score|partition|offset[|reasons]``,
expiring ``dedup_window_hours`` after its last write. A duplicate carries its original event
time, so it is looked up in one hash. Cost: one pipelined HMGET and one HSET per batch.

While Redis is unreachable new decisions are kept in process (bounded) and written when it
answers; a duplicate arriving meanwhile is found there if this worker decided it first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import orjson

from riskstream.streams.redis_outage import RedisUnavailable

DECISIONS = ("approve", "step_up", "review", "decline")
_CODES = {name: k for k, name in enumerate(DECISIONS)}
HOUR_MS = 3_600_000


@dataclass(frozen=True)
class Earlier:
    """A transaction's first decision, the alerts and limit controls it raised (given again
    with it: the first ones may not have been delivered), and where its record sat."""

    decision: str
    score: float
    reasons: list[str]
    partition: int
    offset: int
    alerts: list[dict] = field(default_factory=list)
    limits: list[dict] = field(default_factory=list)

    def encode(self) -> str:
        head = f"{_CODES[self.decision]}|{self.score:.6g}|{self.partition}|{self.offset}"
        if not (self.reasons or self.alerts or self.limits):
            return head
        more = orjson.dumps([self.reasons, self.alerts, self.limits], option=orjson.OPT_SERIALIZE_NUMPY)
        return f"{head}|{more.decode()}"

    @classmethod
    def decode(cls, text: bytes | str) -> "Earlier":
        if isinstance(text, bytes):
            text = text.decode()
        parts = text.split("|", 4)
        reasons, alerts, limits = orjson.loads(parts[4]) if len(parts) == 5 else ([], [], [])
        return cls(DECISIONS[int(parts[0])], float(parts[1]), reasons, int(parts[2]), int(parts[3]), alerts, limits)


class DecisionMemory:
    """Decisions by transaction id, in Redis (a worker's)."""

    def __init__(self, redis_client, guard, window_hours: float = 48.0, prefix: str = "rs:decided:",
                 max_unwritten: int = 500_000):
        self.redis, self.guard = redis_client, guard
        self.ttl_s = max(1, int(window_hours * 3600))
        self.prefix = prefix
        self.max_unwritten = max_unwritten
        # Decisions not yet written (Redis was down): key -> {transaction id: encoded}
        self.unwritten: OrderedDict[str, dict[str, str]] = OrderedDict()
        self.recalled = 0  # transactions given their earlier decision
        self.lost = 0  # decisions forgotten unwritten (past max_unwritten during an outage)

    def recall(self, topic: str, ids: np.ndarray, event_time_ms: np.ndarray) -> dict[int, Earlier]:
        """Rows (indexes into ``ids``) decided before, with their earlier decision."""
        found: dict[int, Earlier] = {}
        if not len(ids):
            return found
        hours = event_time_ms // HOUR_MS
        groups = [(f"{self.prefix}{topic}:{h}", np.flatnonzero(hours == h)) for h in np.unique(hours).tolist()]
        for key, rows in groups:
            waiting = self.unwritten.get(key)
            if waiting:
                for i in rows.tolist():
                    hit = waiting.get(ids[i])
                    if hit is not None:
                        found[i] = Earlier.decode(hit)
        try:
            answers = self.guard.call(self._hmget, groups, ids)
        except RedisUnavailable:
            answers = []
        for (_, rows), values in zip(groups, answers):
            for i, value in zip(rows.tolist(), values):
                if value is not None:
                    found.setdefault(i, Earlier.decode(value))
        self.recalled += len(found)
        return found

    def _hmget(self, groups, ids: np.ndarray) -> list:
        pipe = self.redis.pipeline(transaction=False)
        for key, rows in groups:
            pipe.hmget(key, ids[rows].tolist())
        return pipe.execute()

    def remember(self, topic: str, scored, rows: np.ndarray) -> None:
        """Remember the decisions of ``rows`` of a scored batch (and any left unwritten)."""
        b = scored.batch
        hours = b.event_time_ms[rows] // HOUR_MS
        ids = b.transaction_id[rows].tolist()
        decisions = scored.decision[rows].tolist()
        scores = scored.score[rows].tolist()
        parts, offs = b.partition[rows].tolist(), b.offset[rows].tolist()
        raised = _by_event(scored.alerts), _by_event(scored.limits)
        for h in np.unique(hours).tolist():
            key = f"{self.prefix}{topic}:{h}"
            entry = self.unwritten.setdefault(key, {})
            for k in np.flatnonzero(hours == h).tolist():
                i = int(rows[k])
                entry[ids[k]] = Earlier(decisions[k], scores[k], list(scored.reasons[i]), parts[k], offs[k],
                                        raised[0].get(ids[k], []), raised[1].get(ids[k], [])).encode()
        try:
            self.guard.call(self._write)
        except RedisUnavailable:
            self._bound()

    def _write(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for key, mapping in self.unwritten.items():
            if mapping:
                pipe.hset(key, mapping=mapping)
                pipe.expire(key, self.ttl_s)
        pipe.execute()
        self.unwritten.clear()

    def _bound(self) -> None:
        held = sum(map(len, self.unwritten.values()))
        while held > self.max_unwritten and self.unwritten:
            _, oldest = self.unwritten.popitem(last=False)
            held -= len(oldest)
            self.lost += len(oldest)


def _by_event(items: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for item in items:
        out.setdefault(item["event_id"], []).append(item)
    return out


def decide_once(memory: DecisionMemory, process, batch, topic: str, folded: dict[int, int],
                versions: tuple[str, str] = ("", "")):
    """Process a transaction batch so that a transaction seen before is decided and folded
    once: ``process(sub_batch) -> Outputs`` scores the rows to score; ``folded`` is, per
    partition, the last offset the feature state holds. Returns the batch's Outputs, rows in
    input order."""
    n = batch.n
    ids = batch.transaction_id
    earlier = memory.recall(topic, ids, batch.event_time_ms)
    parts, offs = batch.partition, batch.offset
    skip = np.zeros(n, dtype=bool)
    for i, e in earlier.items():
        same_record = e.partition == parts[i] and e.offset == offs[i]
        skip[i] = not same_record or offs[i] <= folded.get(int(parts[i]), -1)
    copy_of: dict[int, int] = {}  # a second row of one id in this batch -> its first row
    id_list = ids.tolist()
    if len(set(id_list)) != n:
        first: dict[str, int] = {}
        for i, t in enumerate(id_list):
            j = first.setdefault(t, i)
            if j != i and i not in earlier:
                copy_of[i] = j
                skip[i] = True
    scoring = np.flatnonzero(~skip)
    out = process(batch if len(scoring) == n else batch.take(scoring), len(scoring) > 0)
    scored = out.scored
    if scored is not None and scored.n:
        new = np.ones(scored.n, dtype=bool)
        if earlier:
            row_of = {(t, o): k for k, (t, o) in enumerate(zip(scored.batch.transaction_id.tolist(),
                                                               scored.batch.offset.tolist()))}
            for i, e in earlier.items():
                k = row_of.get((id_list[i], int(offs[i])))
                if k is not None and not skip[i]:  # the same record, folded again: its first decision
                    scored.decision[k], scored.score[k], scored.reasons[k] = e.decision, e.score, list(e.reasons)
                    new[k] = False
        memory.remember(topic, scored, np.flatnonzero(new))
    if not skip.any():
        return out
    out.scored = _with_repeats(batch, scored, earlier, copy_of, skip, versions)
    return out


def _with_repeats(batch, scored, earlier: dict[int, Earlier], copy_of: dict[int, int], skip: np.ndarray,
                  versions: tuple[str, str]):
    """The scored rows and the repeats given their earlier decision, in input order (a repeat
    of a row that failed scoring is left out with it: that row is a dead letter)."""
    from riskstream.streams.pipeline import ScoredBatch

    decided: dict[int, tuple[str, float, list[str]]] = {}
    alerts = list(scored.alerts) if scored is not None else []
    limits = list(scored.limits) if scored is not None else []
    if scored is not None and scored.n:
        where = {(t, o): i for i, (t, o) in enumerate(zip(batch.transaction_id.tolist(), batch.offset.tolist()))
                 if not skip[i]}
        for k, key in enumerate(zip(scored.batch.transaction_id.tolist(), scored.batch.offset.tolist())):
            decided[where[key]] = (scored.decision[k], float(scored.score[k]), scored.reasons[k])
    for i in np.flatnonzero(skip).tolist():
        if i in earlier:
            e = earlier[i]
            decided[i] = (e.decision, e.score, list(e.reasons))
            alerts += e.alerts
            limits += e.limits
        elif copy_of[i] in decided:
            decided[i] = decided[copy_of[i]]
    rows = np.asarray(sorted(decided), dtype=np.int64)
    return ScoredBatch(
        batch=batch.take(rows),
        score=np.asarray([decided[i][1] for i in rows.tolist()], dtype=np.float32),
        decision=np.asarray([decided[i][0] for i in rows.tolist()], dtype=object),
        reasons=[decided[i][2] for i in rows.tolist()],
        rules_version=scored.rules_version if scored is not None else versions[0],
        model_version=scored.model_version if scored is not None else versions[1],
        alerts=alerts,
        limits=limits,
        decided_at_ms=scored.decided_at_ms if scored is not None else int(time.time() * 1000),
    )
