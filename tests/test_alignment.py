"""Transaction partitions drained together in event time (streams/alignment.py)."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from riskstream.streams.alignment import PartitionAligner, record_event_time, record_time_by_topic

HOUR = 3_600_000
BASE = 1_790_000_000_000  # 2026-09


@dataclass
class Record:
    offset: int
    value: bytes
    topic: str = "transactions"


def records(start_hour: int, hours: int, per_hour: int = 4, first_offset: int = 0) -> list[Record]:
    return [Record(first_offset + i, orjson.dumps({"event_time": BASE + start_hour * HOUR + i * HOUR // per_hour}))
            for i in range(hours * per_hour)]


def test_a_partition_days_ahead_waits_for_the_slowest_and_nothing_is_dropped():
    aligner = PartitionAligner(lead_ms=HOUR)
    ahead = records(0, 72)  # three days, all in one fetch
    behind = records(0, 72)  # the same three days, a fetch of 8 hours at a time
    fetches = [behind[i:i + 32] for i in range(0, len(behind), 32)]
    handed: dict[str, list[Record]] = {"p0": [], "p1": []}
    first = True
    while fetches or aligner.holding():
        fetched = {"p1": fetches.pop(0)} if fetches else {}
        if first:
            fetched["p0"], first = ahead, False
        out = aligner.take(fetched, has_more={"p0": True, "p1": bool(fetches)})
        for p, rs in out.items():
            handed[p] += rs
        if fetches:  # while p1 has more to read, p0 never runs more than the lead ahead of it
            p1_at = record_event_time(handed["p1"][-1])
            assert record_event_time(handed["p0"][-1]) <= p1_at + HOUR
        assert aligner.holding() <= {"p0", "p1"}
    assert [r.offset for r in handed["p0"]] == [r.offset for r in ahead]  # all of it, in order
    assert [r.offset for r in handed["p1"]] == [r.offset for r in behind]


def test_the_slowest_partition_always_moves_and_unreadable_records_pass():
    aligner = PartitionAligner(lead_ms=HOUR)
    bad = [Record(0, b"{not json"), *records(50, 2, first_offset=1)]
    out = aligner.take({"p0": bad, "p1": records(0, 1)}, has_more={"p0": True, "p1": True})
    assert len(out["p1"]) == 4  # the slowest moves
    assert [r.offset for r in out["p0"]] == [0]  # the unreadable one goes on (the driver dead-letters it)
    assert aligner.holding() == {"p0"}


def test_lead_zero_hands_everything_on_and_a_drop_forgets_what_was_held():
    assert PartitionAligner(0).take({"p0": records(0, 48), "p1": records(0, 1)},
                                    has_more={"p0": True, "p1": True})["p0"][-1].offset == 191
    aligner = PartitionAligner(HOUR)
    aligner.take({"p0": records(0, 48), "p1": records(0, 1)}, has_more={"p0": True, "p1": True})
    aligner.drop({"p0"})
    assert aligner.holding() == set()


def test_what_is_held_goes_on_in_full_batches_not_an_hour_at_a_time():
    """Two partitions a fetch of 30 hours each, batches of 100: each take hands on about a
    batch (each partition its share, and up to an hour past the other's), held or not."""
    aligner = PartitionAligner(lead_ms=HOUR, batch=100)
    first = aligner.take({"p0": records(0, 30), "p1": records(0, 30)}, has_more={"p0": True, "p1": True})
    assert [len(first[p]) for p in ("p0", "p1")] == [54, 54]  # a share of 50, and the hour past it
    second = aligner.take({}, has_more={"p0": True, "p1": True})  # from what was held
    assert [len(second[p]) for p in ("p0", "p1")] == [54, 54]
    third = aligner.take({}, has_more={"p0": True, "p1": True})
    assert [len(third[p]) for p in ("p0", "p1")] == [12, 12] and aligner.holding() == set()


def test_a_partition_not_read_yet_holds_the_others_until_it_comes():
    """At start-up one partition's fetch comes first: it waits for the others (more to read,
    nothing handed on yet) instead of racing days ahead."""
    aligner = PartitionAligner(lead_ms=HOUR, batch=1000)
    early = aligner.take({"p0": records(0, 72)}, has_more={"p0": True, "p1": True})
    assert early == {} and aligner.holding() == {"p0"}
    both = aligner.take({"p1": records(0, 8)}, has_more={"p0": True, "p1": True})
    assert len(both["p1"]) == 32 and record_event_time(both["p0"][-1]) <= BASE + 9 * HOUR


def test_labels_go_along_with_transactions_by_when_they_became_known():
    # A label's time is when it became known (label_time; its event_time is the payment's).
    # Transactions may not run past the labels partition before the broker has answered for
    # it, nor more than the lead past the labels read so far while it has more to read.
    aligner = PartitionAligner(lead_ms=HOUR, event_time=record_time_by_topic(
        {"transactions": "event_time", "labels": "label_time"}))
    payments = records(0, 72)
    labels = [Record(i, orjson.dumps({"event_time": BASE, "label_time": BASE + (6 + 6 * i) * HOUR}), "labels")
              for i in range(11)]  # known every 6 hours from hour 6 to hour 66
    assert aligner.take({"tx": payments}, has_more={"tx": True, "lab": True}) == {}  # labels not answered yet
    out = aligner.take({"lab": labels[:3]}, has_more={"tx": True, "lab": True})  # labels known up to hour 18
    handed_tx = out["tx"]
    assert BASE + 18 * HOUR <= record_event_time(handed_tx[-1]) <= BASE + 19 * HOUR  # by label_time
    assert [r.offset for r in out["lab"]] == [0, 1, 2]
    out = aligner.take({"lab": labels[3:6]}, has_more={"tx": True, "lab": True})  # up to hour 36
    handed_tx += out["tx"]
    assert BASE + 36 * HOUR <= record_event_time(handed_tx[-1]) <= BASE + 37 * HOUR
    # Read to its end, the labels partition holds nobody back (a label's time once held the
    # transactions within an hour past it while a sparse partition counted as having more).
    out = aligner.take({"lab": labels[6:]}, has_more={"tx": True, "lab": False})
    handed_tx += out["tx"]
    assert [r.offset for r in handed_tx] == [r.offset for r in payments]  # all, in order
