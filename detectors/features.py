"""Streaming transaction features: per-entity state in numpy arrays, updated by numba kernels.

:class:`FeatureEngine` turns a :class:`~riskstream.schemas.transactions.TransactionBatch` into
float32 feature columns (:data:`FEATURE_NAMES`). Every feature of a row describes the state
*before* that row (the amount-profile features compare the row's amount to that history and
are the only ones that look at the row itself); then the row is folded in. Rows are
processed in arrival order, so a card seen ten times in one batch sees its own earlier rows.

State, and what is approximate
------------------------------
* Counts and sums over 1h / 1d / 7d / 30d are exponentially decayed with a time constant
  equal to the window (O(1) state per window). Under a steady rate they equal the trailing
  window's value; a burst fades smoothly instead of dropping out at the window edge
  (an event one window old still weighs 0.37). Event time, not wall time.
* Mean / std / z-score / ratio of the amount: exponentially weighted, 30d time constant.
* Fraud rates: decayed confirmed frauds / decayed transactions, with a prior of
  ``FRAUD_PRIOR_WEIGHT`` transactions at ``FRAUD_PRIOR_RATE`` (new entity = prior).
  A label is visible from its label time on: it is folded in just before the first row
  whose event time reaches it. Rows arriving out of order after that row may see a label
  up to the batch's time disorder early.
* Distinct merchants of a card / cards of a device in 1d: exact (1 s resolution) up to 8,
  then saturates at 8 (a ring of the 8 most recently seen members).
* New country / new device of a card: not among the card's last 4 distinct ones.
* Out-of-order rows read their entity's state as of its latest event time and are folded in
  with their age at that time; ``card_seconds_since_prev`` is then 0.
* Calendar features are UTC (events carry no time zone).

Entities, memory and eviction
-----------------------------
Entity ids map to dense slots through one open-addressing hash index per entity type, keyed
by a 64-bit hash of the id (``""`` = absent: the entity's features read 0 and no state is
touched); ids themselves are not kept, and two ids would share state only if their hashes
collided (odds ~1e-7 at 2M entities). A Python dict per type cost ~300 ns per id here, the
index ~100. Arrays grow by doubling. When a type holds ``max_entities``, the least recently
seen ones (by latest event time) are evicted, ``max_entities // 64`` beyond what is needed
so eviction runs rarely; entities of the batch being processed are never evicted (a single
batch with more distinct entities of a type than ``max_entities`` overshoots the bound until
the next eviction). An evicted entity that comes back is first-seen again.

Measured (``.venv/bin/python -m riskstream.bench.features_bench``): 228 bytes of state
arrays per card slot plus 42-53 bytes of index per tracked card (kept at most half full):
~280 bytes per card, up to ~390 right after the arrays doubled; ~0.6 GB at the default 2M
cards, before the other entity types. compute() costs 2.3-3 us per transaction on the
2-core build machine (1k-10k batches, 100k-1M cards), about 40% in the id index, 60% in
the kernels (mostly one cache miss per kernel per entity).

Partitions: each entity remembers the Kafka partition of its latest row;
``snapshot(partitions)`` / ``drop_partitions`` select on that. Merchants, terminals,
devices and IPs span partitions when the topic is keyed by card, so their state on a
consumer is a local view of the traffic it sees.

>>> from riskstream.schemas.events import TransactionBatch
>>> engine = FeatureEngine(max_entities=1000)
>>> batch = TransactionBatch.from_columns({
...     "event_time": [1_700_000_000_000, 1_700_000_060_000, 1_700_000_120_000],
...     "card_id": ["c1", "c1", "c2"], "merchant_id": ["m1", "m2", "m1"],
...     "amount": [10.0, 20.0, 30.0]})
>>> f = engine.compute(batch)
>>> f["card_first_seen"].tolist(), float(f["card_seconds_since_prev"][1]), bool(f["merchant_txn_count_1d"][2] > 0.99)
([1.0, 0.0, 1.0], 60.0, True)
>>> engine.tracked_entities["card"], engine.tracked_entities["merchant"]
(2, 2)
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

from riskstream.detectors.id_index import hash_ids, index_delete, index_insert, index_probe, stable_hash64_reference
from riskstream.detectors.kernel_references import calendar_reference
from riskstream.detectors.kernel_registry import KERNELS, StepInput, fresh_state
from riskstream.detectors.kernels import assign_last, calendar
from riskstream.schemas.transactions import TransactionBatch

# Entity type -> TransactionBatch column; order = order of resolution.
ENTITY_COLUMNS: dict[str, str] = {
    "card": "card_id",
    "merchant": "merchant_id",
    "terminal": "terminal_id",
    "device": "device_id",
    "ip": "ip",
    "account": "account_id",
    "customer": "customer_id",
}
LABELLED_ENTITIES = ("card", "merchant", "terminal")
SNAPSHOT_FORMAT = 2
# Members that are attributes, not tracked entities: coded by a stable hash of the value.
ATTRIBUTE_COLUMNS = {"country": "country"}


@dataclass(frozen=True)
class Step:
    """One kernel over one entity type. Feature names are ``{entity}_{kernel output}``;
    ``keep`` lists the outputs that become features (None = all)."""

    entity: str
    kernel: str
    params: dict = field(default_factory=dict)
    keep: tuple[str, ...] | None = None

    @property
    def outputs(self) -> tuple[str, ...]:
        return KERNELS[self.kernel].outputs(self.params)

    @property
    def state_key(self) -> str:
        member = self.params.get("member")
        return f"{self.kernel}_{member}" if member else self.kernel


_NO_GAP = ("txn_count_1h", "txn_count_1d", "amount_sum_1d")
PLAN: tuple[Step, ...] = (
    # The first step of every entity type is decayed_activity: its latest-time column is
    # the entity's last-seen time for eviction.
    Step("card", "decayed_activity", {"counts": ("1h", "1d"), "sums": ("1h", "1d")}),
    Step("card", "decayed_amount_profile", {"window": "30d"}),
    Step("card", "distinct_recent", {"member": "merchant", "window": "1d", "k": 8}),
    Step("card", "novelty_recent", {"member": "country", "k": 4}),
    Step("card", "novelty_recent", {"member": "device", "k": 4}),
    Step("card", "geo_velocity"),
    Step("card", "decayed_fraud_rate", {"windows": ("30d",)}),
    Step("merchant", "decayed_activity", {"counts": ("1h", "1d"), "sums": ()},
         keep=("first_seen", "txn_count_1h", "txn_count_1d")),
    Step("merchant", "decayed_amount_profile", {"window": "30d"}, keep=("amount_mean_30d",)),
    Step("merchant", "decayed_fraud_rate", {"windows": ("7d", "30d")}),
    Step("terminal", "decayed_activity", {"counts": ("1d",), "sums": ()}, keep=_NO_GAP),
    Step("terminal", "decayed_fraud_rate", {"windows": ("7d", "30d")}),
    Step("device", "decayed_activity", {"counts": ("1d",), "sums": ()}, keep=_NO_GAP),
    Step("device", "distinct_recent", {"member": "card", "window": "1d", "k": 8}),
    Step("ip", "decayed_activity", {"counts": ("1h",), "sums": ()}, keep=_NO_GAP),
    Step("account", "decayed_activity", {"counts": ("1d",), "sums": ("1d",)}, keep=_NO_GAP),
    Step("customer", "decayed_activity", {"counts": ("1d",), "sums": ()}, keep=_NO_GAP),
)
TRANSACTION_FEATURES = ("amount", "log_amount", "hour_of_day", "is_night", "is_weekend")


def _layout() -> tuple[tuple[str, ...], list[int], list[int]]:
    """All kernel output rows in plan order, each step's first row, and the rows that are
    features."""
    rows = list(TRANSACTION_FEATURES)
    starts, keep = [], list(range(len(TRANSACTION_FEATURES)))
    for step in PLAN:
        starts.append(len(rows))
        for out in step.outputs:
            if step.keep is None or out in step.keep:
                keep.append(len(rows))
            rows.append(f"{step.entity}_{out}")
    return tuple(rows), starts, keep


_ALL_ROWS, _STEP_ROW, _FEATURE_ROWS = _layout()
_STEP_N_OUT = tuple(len(step.outputs) for step in PLAN)
FEATURE_NAMES: tuple[str, ...] = tuple(_ALL_ROWS[r] for r in _FEATURE_ROWS)


def id_hashes(values: np.ndarray | list) -> np.ndarray:
    """64-bit hashes of id strings ("" -> 0), in one C join plus one jitted pass instead of
    a Python call per id."""
    items = values.tolist() if isinstance(values, np.ndarray) else values
    out = np.empty(len(items), dtype=np.int64)
    if hash_ids(np.frombuffer("\x00".join(items).encode(), dtype=np.uint8), out) != len(items):
        # an id containing NUL: hash each id alone, NUL spelt as bytes UTF-8 never uses
        for i, item in enumerate(items):
            hash_ids(np.frombuffer(item.encode().replace(b"\0", b"\xff\xfe"), dtype=np.uint8), out[i:i + 1])
    return out


def member_codes(hashes: np.ndarray) -> np.ndarray:
    """int32 codes kept in rings and recent sets: the hash's low half, 0 only for absent."""
    codes = (hashes & 0xFFFFFFFF).astype(np.uint32).view(np.int32)
    codes[(codes == 0) & (hashes != 0)] = 1
    return codes


def stable_code(value: str) -> int:
    """member_codes of one id, in plain Python (the references use it)."""
    h = stable_hash64_reference(value)
    c = h & 0xFFFFFFFF
    c = c - (1 << 32) if c >= 1 << 31 else c
    return 1 if (c == 0 and h != 0) else c


def _pow2_at_least(n: int) -> int:
    return 1 << max(4, (n - 1).bit_length())


class EntityTable:
    """Slots of one entity type: a hash index (id hash -> slot) and the state arrays of its
    plan steps. A slot is live when its hash is nonzero. Ids themselves are not kept: the
    hash identifies the entity, in memory and in snapshots."""

    def __init__(self, name: str, max_entities: int, steps: list[Step], initial: int = 1024):
        self.name = name
        self.max_entities = max_entities
        self.steps = steps
        self.capacity = max(1, min(initial, max_entities))
        self.used = 0  # slots [0, used) have been handed out at least once
        self.n_live = 0
        self.free: list[int] = []
        self.hash = np.zeros(self.capacity, dtype=np.int64)
        self.partition = np.full(self.capacity, -1, dtype=np.int32)
        self.states = {s.state_key: fresh_state(KERNELS[s.kernel], s.params, self.capacity) for s in steps}
        self._blank = {s.state_key: fresh_state(KERNELS[s.kernel], s.params, 1)[0] for s in steps}
        self.index = self._new_index(2 * self.capacity)
        self.evicted = 0

    def __len__(self) -> int:
        return self.n_live

    @staticmethod
    def _new_index(entries: int) -> np.ndarray:
        # at most half full, so probe chains stay ~1-2 rows
        index = np.zeros((_pow2_at_least(2 * entries), 2), dtype=np.int64)
        index[:, 1] = -1
        return index

    @property
    def live(self) -> np.ndarray:
        return self.hash[: self.used] != 0

    @property
    def last_seen_ms(self) -> np.ndarray:
        return self.states["decayed_activity"][:, 0]

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Slots of known ids, -1 for unknown or absent; creates nothing."""
        slots = np.empty(len(ids), dtype=np.int64)
        index_probe(id_hashes(ids), self.index, slots)
        slots[slots == -2] = -1
        return slots

    def resolve(self, ids: np.ndarray | list) -> np.ndarray:
        """Slots of ids (-1 for ""), creating the new ones (evicting if full)."""
        return self.resolve_hashes(id_hashes(ids))

    def resolve_hashes(self, hashes: np.ndarray) -> np.ndarray:
        slots = np.empty(len(hashes), dtype=np.int64)
        if index_probe(hashes, self.index, slots):
            missing = slots == -2
            new = np.unique(hashes[missing])
            self._make_room(len(new), slots[slots >= 0])
            new_slots = self._allocate(len(new))
            self.hash[new_slots] = new
            if 2 * (self.n_live + len(new)) > len(self.index):
                self._rebuild_index(self.n_live + len(new))
            index_insert(self.index, new, new_slots)
            self.n_live += len(new)
            slots[missing] = new_slots[np.searchsorted(new, hashes[missing])]
        return slots

    def rename(self, old_ids: list[str], new_ids: list[str]) -> int:
        """Move the state of each old id that has some to its new id, when the new id has
        none yet (a card tokenized under a new key: ``schemas.pan``). Returns how many moved."""
        old_h, new_h = id_hashes(old_ids), id_hashes(new_ids)
        old_slots, new_slots = np.empty(len(old_h), np.int64), np.empty(len(new_h), np.int64)
        index_probe(old_h, self.index, old_slots)
        index_probe(new_h, self.index, new_slots)
        move = np.flatnonzero((old_slots >= 0) & (new_slots == -2))
        move = move[np.unique(new_h[move], return_index=True)[1]]  # two old ids for one card: the first
        if not len(move):
            return 0
        index_delete(self.index, old_h[move])
        self.hash[old_slots[move]] = new_h[move]
        index_insert(self.index, new_h[move], old_slots[move])
        return len(move)

    def _rebuild_index(self, entries: int) -> None:
        self.index = self._new_index(entries)
        live = np.flatnonzero(self.live)
        index_insert(self.index, self.hash[live], live)

    def _make_room(self, n_new: int, protected: np.ndarray) -> None:
        excess = self.n_live + n_new - self.max_entities
        if excess <= 0:
            return
        excess += self.max_entities // 64
        last_seen = self.last_seen_ms[: self.used].copy()
        last_seen[~self.live] = np.inf
        last_seen[protected] = np.inf
        excess = min(excess, int(np.count_nonzero(last_seen != np.inf)))
        if excess > 0:
            self.release(np.argpartition(last_seen, excess - 1)[:excess])

    def release(self, victims: np.ndarray) -> None:
        index_delete(self.index, self.hash[victims])
        self.hash[victims] = 0
        self.partition[victims] = -1
        for key, state in self.states.items():
            state[victims] = self._blank[key]
        self.free.extend(victims.tolist())
        self.n_live -= len(victims)
        self.evicted += len(victims)

    def _allocate(self, n: int) -> np.ndarray:
        take = min(n, len(self.free))
        reused = self.free[len(self.free) - take:]
        del self.free[len(self.free) - take:]
        fresh = n - take
        if self.used + fresh > self.capacity:
            self._grow(self.used + fresh)
        out = np.array(reused + list(range(self.used, self.used + fresh)), dtype=np.int64)
        self.used += fresh
        return out

    def _grow(self, need: int) -> None:
        cap = max(need, min(2 * self.capacity, max(self.max_entities, need)))

        def grown(a: np.ndarray, fill) -> np.ndarray:
            b = np.empty((cap,) + a.shape[1:], dtype=a.dtype)
            b[: self.capacity] = a
            b[self.capacity:] = fill
            return b

        self.hash = grown(self.hash, 0)
        self.partition = grown(self.partition, -1)
        self.states = {k: grown(v, self._blank[k]) for k, v in self.states.items()}
        self.capacity = cap

    def nbytes(self) -> int:
        return (self.hash.nbytes + self.partition.nbytes + self.index.nbytes
                + sum(s.nbytes for s in self.states.values()))

    def row_bytes(self) -> int:
        """Array bytes per slot, index excluded."""
        return 8 + 4 + sum(s.itemsize * s.shape[1] for s in self.states.values())


class FeatureEngine:
    """Streaming features over transaction batches; see the module docstring."""

    def __init__(self, max_entities: int = 2_000_000):
        if max_entities < 1:
            raise ValueError("max_entities must be at least 1")
        self.max_entities = max_entities
        self.tables = {
            name: EntityTable(name, max_entities, [s for s in PLAN if s.entity == name])
            for name in ENTITY_COLUMNS
        }
        self._pending: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {e: [] for e in LABELLED_ENTITIES}

    # ----------------------------------------------------------------------------- compute
    def compute(self, batch: TransactionBatch) -> dict[str, np.ndarray]:
        n = batch.n
        t_ms = np.ascontiguousarray(batch.event_time_ms, dtype=np.int64)
        amount = np.ascontiguousarray(batch.amount, dtype=np.float64)
        rows = np.zeros((len(_ALL_ROWS), n), dtype=np.float32)
        rows[0] = amount
        rows[1] = np.log1p(amount)
        calendar(t_ms, rows[2], rows[3], rows[4])
        if n == 0:
            return {name: rows[r] for name, r in zip(FEATURE_NAMES, _FEATURE_ROWS)}
        partition = np.ascontiguousarray(batch.partition, dtype=np.int32)

        slots: dict[str, np.ndarray | None] = {}
        for name, table in self.tables.items():
            ids = batch.column(ENTITY_COLUMNS[name]).tolist()
            if not any(ids):  # column absent from this batch: skip the index pass
                slots[name] = None
                continue
            s = table.resolve(ids)
            assign_last(s, partition, table.partition)
            slots[name] = s

        t_max = int(t_ms.max())
        lat = np.ascontiguousarray(batch.lat, dtype=np.float64)
        lon = np.ascontiguousarray(batch.lon, dtype=np.float64)
        for step, start, n_out in zip(PLAN, _STEP_ROW, _STEP_N_OUT):
            s = slots[step.entity]
            if s is None:
                if step.kernel != "decayed_fraud_rate" or not self._pending[step.entity]:
                    continue  # rows stay 0
                s = np.full(n, -1, dtype=np.int64)  # labels still come due for known entities
            spec = KERNELS[step.kernel]
            table = self.tables[step.entity]
            x = StepInput(s, t_ms, amount)
            if step.kernel in ("distinct_recent", "novelty_recent"):
                x = StepInput(s, t_ms, amount, member_codes=self._member_codes(step.params["member"], batch, slots))
            elif step.kernel == "geo_velocity":
                x = StepInput(s, t_ms, amount, lat=lat, lon=lon)
            elif step.kernel == "decayed_fraud_rate":
                lk, le, lt = self._due_labels(step.entity, t_max)
                label_slots = table.lookup(lk) if len(lk) else np.empty(0, dtype=np.int64)
                x = StepInput(s, t_ms, amount, label_keys=label_slots, label_event_ms=le, label_time_ms=lt)
            applied = spec.run(step.params, x, table.states[step.state_key], rows[start:start + n_out])
            if step.kernel == "decayed_fraud_rate" and applied != len(x.label_keys):
                raise AssertionError("labels due by the batch's latest event time were not all applied")
        return {name: rows[r] for name, r in zip(FEATURE_NAMES, _FEATURE_ROWS)}

    def _member_codes(self, member: str, batch: TransactionBatch, slots: dict) -> np.ndarray:
        if member in self.tables:
            s = slots[member]
            if s is None:
                return np.zeros(batch.n, dtype=np.int32)
            return member_codes(np.where(s >= 0, self.tables[member].hash[s], 0))
        return member_codes(id_hashes(batch.column(ATTRIBUTE_COLUMNS[member])))

    # ------------------------------------------------------------------------------ labels
    def rename_cards(self, moved: dict[str, str]) -> int:
        """Cards seen under a new tokenization key keep their history (``schemas.pan``)."""
        return self.tables["card"].rename(list(moved), list(moved.values()))

    def apply_labels(self, entity_keys: dict[str, np.ndarray], event_time_ms: np.ndarray,
                     label_time_ms: np.ndarray, is_positive: np.ndarray) -> None:
        """Queue confirmed frauds; each counts for its card / merchant / terminal from its label
        time on (folded in by the first later ``compute`` row that reaches it). Negative
        labels change nothing: every transaction is already in the denominator. Send each
        label once: duplicates count twice."""
        unknown = set(entity_keys) - set(LABELLED_ENTITIES)
        if unknown:
            raise ValueError(f"label features exist for {LABELLED_ENTITIES}, not {sorted(unknown)}")
        positive = np.asarray(is_positive).astype(bool)
        event = np.asarray(event_time_ms, dtype=np.int64)[positive]
        label = np.asarray(label_time_ms, dtype=np.int64)[positive]
        for entity, keys in entity_keys.items():
            keys = np.asarray(keys, dtype=object)[positive]
            present = keys != ""
            if present.any():
                self._pending[entity].append((keys[present], event[present], label[present]))

    def _due_labels(self, entity: str, t_max: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pending = self._pending[entity]
        if not pending:
            return np.empty(0, dtype=object), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        keys = np.concatenate([p[0] for p in pending])
        event = np.concatenate([p[1] for p in pending])
        label = np.concatenate([p[2] for p in pending])
        due = label <= t_max
        self._pending[entity] = [(keys[~due], event[~due], label[~due])] if not due.all() else []
        order = np.argsort(label[due], kind="stable")
        return keys[due][order], event[due][order], label[due][order]

    # ------------------------------------------------------------------- state management
    @property
    def tracked_entities(self) -> dict[str, int]:
        return {name: len(t) for name, t in self.tables.items()}

    def state_bytes(self) -> int:
        return sum(t.nbytes() for t in self.tables.values())

    def drop_partitions(self, partitions: set[int]) -> None:
        parts = np.fromiter(partitions, dtype=np.int32)
        for table in self.tables.values():
            victims = np.flatnonzero(table.live & np.isin(table.partition[: table.used], parts))
            if len(victims):
                table.release(victims)

    def snapshot(self, partitions: set[int] | None = None) -> bytes:
        """State of the entities last seen on ``partitions`` (all when None), as an .npz of
        plain numeric arrays keyed by entity id hash (loading needs no pickle). Labels still
        waiting for their label time are not included."""
        arrays: dict[str, np.ndarray] = {"format_version": np.array([SNAPSHOT_FORMAT])}
        for name, table in self.tables.items():
            mask = table.live
            if partitions is not None:
                mask &= np.isin(table.partition[: table.used], np.fromiter(partitions, dtype=np.int32))
            sel = np.flatnonzero(mask)
            arrays[f"{name}.hash"] = table.hash[sel]
            arrays[f"{name}.partition"] = table.partition[sel]
            for key, state in table.states.items():
                arrays[f"{name}.{key}"] = state[sel]
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    def restore(self, blob: bytes) -> None:
        """Merge a snapshot in: its entities replace any state held for the same ids."""
        with np.load(io.BytesIO(blob), allow_pickle=False) as data:
            if int(data["format_version"][0]) != SNAPSHOT_FORMAT:
                raise ValueError(f"unknown feature snapshot format {int(data['format_version'][0])}")
            for name, table in self.tables.items():
                hashes = data[f"{name}.hash"] if f"{name}.hash" in data else np.empty(0, np.int64)
                if len(hashes) == 0:
                    continue
                incoming = {key: data[f"{name}.{key}"] for key in table.states}
                for key, state in table.states.items():
                    if incoming[key].shape[1:] != state.shape[1:] or incoming[key].dtype != state.dtype:
                        raise ValueError(f"snapshot {name}.{key} has shape {incoming[key].shape[1:]} / "
                                         f"{incoming[key].dtype}, expected {state.shape[1:]} / {state.dtype}")
                slots = table.resolve_hashes(hashes)
                table.partition[slots] = data[f"{name}.partition"]
                for key, state in table.states.items():
                    state[slots] = incoming[key]


class ReferenceFeatures:
    """The same plan run by the plain-Python references over dicts keyed by entity id
    (no slots, no eviction, no snapshots): the parity oracle for :class:`FeatureEngine`."""

    def __init__(self):
        self.states = [dict() for _ in PLAN]
        self._pending: dict[str, list[tuple[str, int, int]]] = {e: [] for e in LABELLED_ENTITIES}

    def compute(self, batch: TransactionBatch) -> dict[str, np.ndarray]:
        n = batch.n
        t_ms = np.asarray(batch.event_time_ms, dtype=np.int64)
        amount = np.asarray(batch.amount, dtype=np.float64)
        rows = np.zeros((len(_ALL_ROWS), n), dtype=np.float64)
        rows[0] = amount
        rows[1] = np.log1p(amount)
        calendar_reference(t_ms, rows[2], rows[3], rows[4])
        keys = {name: [k if k else None for k in batch.column(col).tolist()] for name, col in ENTITY_COLUMNS.items()}
        t_max = int(t_ms.max()) if n else None
        for step, start, state in zip(PLAN, _STEP_ROW, self.states):
            spec = KERNELS[step.kernel]
            member = step.params.get("member")
            codes = None
            if member is not None:
                values = keys[member] if member in keys else batch.column(ATTRIBUTE_COLUMNS[member]).tolist()
                codes = np.array([stable_code(v) if v else 0 for v in values], dtype=np.int32)
            labels = ([], np.empty(0, np.int64), np.empty(0, np.int64))
            if step.kernel == "decayed_fraud_rate" and n:
                due = [p for p in self._pending[step.entity] if p[2] <= t_max]
                self._pending[step.entity] = [p for p in self._pending[step.entity] if p[2] > t_max]
                labels = ([p[0] for p in due], np.array([p[1] for p in due], dtype=np.int64),
                          np.array([p[2] for p in due], dtype=np.int64))
            x = StepInput(keys[step.entity], t_ms, amount, member_codes=codes,
                          lat=np.asarray(batch.lat, dtype=np.float64), lon=np.asarray(batch.lon, dtype=np.float64),
                          label_keys=labels[0], label_event_ms=labels[1], label_time_ms=labels[2])
            spec.run_reference(step.params, x, state, rows[start:start + len(step.outputs)])
        return {name: rows[r] for name, r in zip(FEATURE_NAMES, _FEATURE_ROWS)}

    def apply_labels(self, entity_keys, event_time_ms, label_time_ms, is_positive) -> None:
        for entity, keys in entity_keys.items():
            for k, e, lt, pos in zip(keys, event_time_ms, label_time_ms, is_positive):
                if pos and k:
                    self._pending[entity].append((k, int(e), int(lt)))
