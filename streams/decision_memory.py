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
(``rs:decided:<topic>:<hour>``), a 64-bit hash of the transaction id -> decision, score,
partition, offset (25 bytes a transaction with the field; reasons, alerts and limit controls
as JSON after them for the rows that have any), expiring ``dedup_window_hours`` after its
last write. A duplicate carries its original event time, so it is looked up in one hash.
Cost: one script call to look a batch up and one to write it, each with the batch as one
argument.

While Redis is unreachable new decisions are kept in process (bounded) and written when it
answers; a duplicate arriving meanwhile is found there if this worker decided it first.
"""

from __future__ import annotations

import struct
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import orjson
from redis.exceptions import NoScriptError

from riskstream.detectors.features import id_hashes
from riskstream.streams.redis_outage import RedisUnavailable

DECISIONS = ("approve", "step_up", "review", "decline")
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

    @classmethod
    def decode(cls, value: bytes) -> "Earlier":
        code, score, partition, offset = struct.unpack("<Bfiq", value[:_FIXED])
        reasons, alerts, limits = orjson.loads(value[_FIXED:]) if len(value) > _FIXED else ([], [], [])
        return cls(DECISIONS[code], score, reasons, partition, offset, alerts, limits)


# A remembered decision: 8-byte id hash (the field), then the value: decision code, float32
# score, partition, offset (17 bytes), and for the few rows with reasons, alerts or limit
# controls, those as JSON after it.
_RECORD = np.dtype([("id", "<i8"), ("code", "u1"), ("score", "<f4"), ("partition", "<i4"), ("offset", "<i8")])
_FIXED = _RECORD.itemsize - 8

# The batch's id hashes go to Redis as one argument and only the hits come back: a
# 5,000-row HMGET through the client cost ~2 µs a row to pack and parse, the script ~0.1.
_RECALL = """
local blob, out, n, i = ARGV[1], {}, #ARGV[1] / 8, 1
while i <= n do
  local j, fields = math.min(n, i + 3999), {}
  for k = i, j do fields[#fields + 1] = string.sub(blob, 8 * k - 7, 8 * k) end
  local got = redis.call('HMGET', KEYS[1], unpack(fields))
  for k = 1, #got do
    if got[k] then out[#out + 1] = i + k - 2; out[#out + 1] = got[k] end
  end
  i = j + 1
end
return out
"""
_REMEMBER = """
local blob, size, n, i = ARGV[1], tonumber(ARGV[3]), #ARGV[1] / tonumber(ARGV[3]), 1
while i <= n do
  local j, args = math.min(n, i + 999), {}
  for k = i, j do
    local at = size * (k - 1)
    args[#args + 1] = string.sub(blob, at + 1, at + 8)
    args[#args + 1] = string.sub(blob, at + 9, at + size)
  end
  redis.call('HSET', KEYS[1], unpack(args))
  i = j + 1
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return n
"""


class DecisionMemory:
    """Decisions by transaction id (a 64-bit hash of it), in Redis (a worker's). Two ids share
    an entry only if their hashes collide: odds about n**2 / 2**65, ~3e-6 at 10 million ids
    in the window."""

    def __init__(self, redis_client, guard, window_hours: float = 48.0, prefix: str = "rs:decided:",
                 max_unwritten: int = 500_000):
        self.redis, self.guard = redis_client, guard
        self.ttl_s = max(1, int(window_hours * 3600))
        self.prefix = prefix
        self.max_unwritten = max_unwritten
        self._recall_script = redis_client.register_script(_RECALL)
        self._remember_script = redis_client.register_script(_REMEMBER)
        # Decisions not yet written (Redis was down): key -> {id hash (8 bytes): value}
        self.unwritten: OrderedDict[str, dict[bytes, bytes]] = OrderedDict()
        self.recalled = 0  # transactions given their earlier decision
        self.lost = 0  # decisions forgotten unwritten (past max_unwritten during an outage)

    def recall(self, topic: str, ids: np.ndarray, event_time_ms: np.ndarray,
               hashes: np.ndarray | None = None) -> dict[int, Earlier]:
        """Rows (indexes into ``ids``) decided before, with their earlier decision (``hashes``:
        ``id_hashes(ids)``, when the caller has them)."""
        found: dict[int, Earlier] = {}
        self._flush()
        if not len(ids):
            return found
        hashes = id_hashes(ids) if hashes is None else hashes
        hours = event_time_ms // HOUR_MS
        groups = [(f"{self.prefix}{topic}:{h}", np.flatnonzero(hours == h)) for h in np.unique(hours).tolist()]
        for key, rows in groups:  # first the ones still waiting to be written (Redis down)
            waiting = self.unwritten.get(key)
            if waiting:
                for i in rows.tolist():
                    hit = waiting.get(hashes[i].tobytes())
                    if hit is not None:
                        found[i] = Earlier.decode(hit)
        try:
            answers = self.guard.call(self._recall_all, groups, hashes)
        except RedisUnavailable:
            answers = []
        for (_, rows), hits in zip(groups, answers):
            for k in range(0, len(hits), 2):
                found.setdefault(int(rows[int(hits[k])]), Earlier.decode(hits[k + 1]))
        self.recalled += len(found)
        return found

    def _recall_all(self, groups, hashes: np.ndarray) -> list:
        def build(pipe) -> None:
            for key, rows in groups:
                pipe.evalsha(self._recall_script.sha, 1, key, hashes[rows].tobytes())
        return self._execute(build)

    def _execute(self, build) -> list:
        """A pipeline whose scripts go by EVALSHA alone. Passed to a pipeline, redis-py's
        scripts ask SCRIPT EXISTS before every execute: a second round trip for each batch's
        look-up and for its write, ~8% of a worker's time at 1,000 transactions/s in batches
        of one or two (bench/results/2026-12-06-worker-per-batch-costs.txt). Redis
        forgets scripts only on a restart or SCRIPT FLUSH: then they are loaded and the
        pipeline sent again (its commands can run twice: look-ups, and writes of the same
        values)."""
        def send() -> list:
            pipe = self.redis.pipeline(transaction=False)
            build(pipe)
            return pipe.execute()

        try:
            return send()
        except NoScriptError:
            for script in (self._recall_script, self._remember_script):
                self.redis.script_load(script.script)
            return send()

    def remember(self, topic: str, scored, rows: np.ndarray, hashes: np.ndarray | None = None) -> None:
        """Remember the decisions of ``rows`` of a scored batch (``hashes``: the id hashes of
        the scored batch's rows, when the caller has them)."""
        if not len(rows):
            return
        b = scored.batch
        records = np.empty(len(rows), dtype=_RECORD)
        records["id"] = id_hashes(b.transaction_id[rows]) if hashes is None else hashes[rows]
        records["code"] = _codes(scored.decision[rows])
        records["score"] = scored.score[rows]
        records["partition"] = b.partition[rows]
        records["offset"] = b.offset[rows]
        hours = b.event_time_ms[rows] // HOUR_MS
        extra = self._extras(scored, rows, records)
        groups = [(f"{self.prefix}{topic}:{h}", hours == h) for h in np.unique(hours).tolist()]
        try:
            self.guard.call(self._write, groups, records, extra)
        except RedisUnavailable:
            for key, sel in groups:
                entry = self.unwritten.setdefault(key, {})
                for k in np.flatnonzero(sel).tolist():
                    entry[records[k : k + 1]["id"].tobytes()] = extra.get(k) or records[k : k + 1].tobytes()[8:]
            self._bound()

    @staticmethod
    def _extras(scored, rows: np.ndarray, records: np.ndarray) -> dict[int, bytes]:
        """Full values of the rows with reasons, alerts or limit controls (by row in ``rows``)."""
        raised = _by_event(scored.alerts), _by_event(scored.limits)
        ids = scored.batch.transaction_id
        with_reasons = np.fromiter(map(bool, scored.reasons), dtype=bool, count=len(scored.reasons))[rows]
        if raised[0] or raised[1]:
            keys = raised[0].keys() | raised[1].keys()
            with_reasons |= np.fromiter((t in keys for t in ids[rows].tolist()), dtype=bool, count=len(rows))
        out = {}
        for k in np.flatnonzero(with_reasons).tolist():
            i = int(rows[k])
            alerts, limits = raised[0].get(ids[i], ()), raised[1].get(ids[i], ())
            more = orjson.dumps([list(scored.reasons[i]), list(alerts), list(limits)], option=orjson.OPT_SERIALIZE_NUMPY)
            out[k] = records[k : k + 1].tobytes()[8:] + more
        return out

    def _write(self, groups, records: np.ndarray, extra: dict[int, bytes]) -> None:
        def build(pipe) -> None:
            for key, sel in groups:
                pipe.evalsha(self._remember_script.sha, 1, key, records[sel].tobytes(), self.ttl_s,
                             _RECORD.itemsize)
                more = {records[k : k + 1]["id"].tobytes(): v for k, v in extra.items() if sel[k]}
                if more:
                    pipe.hset(key, mapping=more)
        self._execute(build)

    # ----- row-shaped streams (loan applications): few a second, the decision as JSON -------
    def recall_decisions(self, topic: str, ids: list[str], event_time_ms: list[int]) -> dict[int, dict]:
        """Rows decided before: their decision message, and under ``"alerts"`` what it raised."""
        found: dict[int, dict] = {}
        self._flush()
        if not ids:
            return found
        keys = [f"{self.prefix}{topic}:{t // HOUR_MS}" for t in event_time_ms]
        for i, (key, event_id) in enumerate(zip(keys, ids)):
            hit = self.unwritten.get(key, {}).get(event_id.encode())
            if hit is not None:
                found[i] = orjson.loads(hit)
        try:
            values = self.guard.call(self._hmget_each, keys, ids)
        except RedisUnavailable:
            values = []
        for i, value in enumerate(values):
            if value is not None and i not in found:
                found[i] = orjson.loads(value)
        self.recalled += len(found)
        return found

    def _hmget_each(self, keys: list[str], ids: list[str]) -> list:
        pipe = self.redis.pipeline(transaction=False)
        for key, event_id in zip(keys, ids):
            pipe.hget(key, event_id)
        return pipe.execute()

    def remember_decisions(self, topic: str, decisions: list[dict], alerts: list[dict]) -> None:
        raised = _by_event(alerts)
        for d in decisions:
            key = f"{self.prefix}{topic}:{round(d['event_time'] * 1000) // HOUR_MS}"
            self.unwritten.setdefault(key, {})[d["event_id"].encode()] = orjson.dumps(
                {**d, "alerts": raised.get(d["event_id"], [])}, option=orjson.OPT_SERIALIZE_NUMPY)
        try:
            self.guard.call(self._write_unwritten)
        except RedisUnavailable:
            self._bound()

    def _flush(self) -> None:
        """Write the decisions kept while Redis was down, once it answers again."""
        if self.unwritten and self.guard.up:
            try:
                self.guard.call(self._write_unwritten)
            except RedisUnavailable:
                pass

    def _write_unwritten(self) -> None:
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


def _codes(decisions: np.ndarray) -> np.ndarray:
    codes = np.zeros(len(decisions), dtype=np.uint8)
    for k, name in enumerate(DECISIONS[1:], 1):
        codes[decisions == name] = k
    return codes


def _by_event(items: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for item in items:
        out.setdefault(item["event_id"], []).append(item)
    return out


def decide_once(memory: DecisionMemory, process, batch, topic: str, folded: dict[int, int],
                versions: tuple[str, str] = ("", "")):
    """Process a transaction batch so that a transaction seen before is decided and folded
    once: ``process(sub_batch) -> Outputs`` scores the rows to score (maybe none); ``folded`` is, per
    partition, the last offset the feature state holds. Returns the batch's Outputs, rows in
    input order."""
    n = batch.n
    ids = batch.transaction_id
    hashes = id_hashes(ids)  # once, for the look-up and the write
    earlier = memory.recall(topic, ids, batch.event_time_ms, hashes)
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
    out = process(batch if len(scoring) == n else batch.take(scoring))
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
        # A batch retried row by row may have lost rows to dead letters: hash what is left then.
        memory.remember(topic, scored, np.flatnonzero(new), hashes[scoring] if scored.n == len(scoring) else None)
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
