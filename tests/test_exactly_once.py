"""Exactly once on Apache Kafka: a worker SIGKILLed again and again during a drain, and a
read-committed consumer of ``decisions`` that then finds one decision per transaction."""

from __future__ import annotations

import collections
import signal
import time

import orjson
import pytest

from tests.conftest import produce, wait_for

pytestmark = pytest.mark.integration

EXACTLY_ONCE = {"RISKSTREAM_PROCESSING_GUARANTEE": "exactly_once", "RISKSTREAM_WORKER_NAME": "w0"}


class DecisionsTopic:
    """Everything on ``decisions`` from the start, read as a risk desk's service would."""

    def __init__(self, settings, isolation: str = "read_committed"):
        from riskstream.bench.broker_runs import decisions_consumer

        self.consumer = decisions_consumer(settings, from_end=False, isolation=isolation)
        self.seen: collections.Counter[str] = collections.Counter()

    def read(self) -> int:
        """Reads what has arrived (for at most half a second, so that a caller watching the
        progress of a drain sees it); returns how many distinct transactions have a decision."""
        until = time.monotonic() + 0.5
        while time.monotonic() < until:
            msgs = self.consumer.consume(2_000, timeout=0.1)
            self.seen.update(orjson.loads(m.value())["event_id"] for m in msgs if not m.error())
            if not msgs:
                break
        return len(self.seen)

    def drain(self) -> None:
        """Reads until a whole second brings nothing."""
        while True:
            msgs = self.consumer.consume(10_000, timeout=1.0)
            self.seen.update(orjson.loads(m.value())["event_id"] for m in msgs if not m.error())
            if not msgs:
                return

    def close(self) -> None:
        self.consumer.close()


def _transactions(n: int, now_ms: int) -> list[tuple[bytes, bytes]]:
    return [(f"card-{i % 997}".encode(),
             orjson.dumps({"transaction_id": f"eo-{i}", "event_time": now_ms - 600_000 + i // 100,
                           "card_id": f"card-{i % 997}", "merchant_id": f"m-{i % 31}",
                           "amount": 10.0 + i % 500, "country": "NL", "channel": "ecom"}))
            for i in range(n)]


def _kill_inside_a_transaction(worker, committed: DecisionsTopic, everything: DecisionsTopic, cut_short: int) -> int:
    """SIGKILL the worker while it has outputs on the broker in a transaction not committed
    yet. Killed at a moment taken blind, it sometimes sat between a commit and its next
    batch's outputs, and in some runs none of three kills cut a transaction short. Frozen
    (SIGSTOP), it cannot commit while both consumers read all there is: outputs that only
    the uncommitted one sees, beyond those of earlier kills (``cut_short``), belong to its
    open transaction. Returns the new count; the worker's successor aborts them."""
    for _ in range(40):
        worker.proc.send_signal(signal.SIGSTOP)
        committed.drain()
        everything.drain()
        open_now = sum(everything.seen.values()) - sum(committed.seen.values())
        if open_now > cut_short:
            worker.stop(signal.SIGKILL)
            return open_now
        worker.proc.send_signal(signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError("the worker was never caught with a transaction open")


@pytest.mark.only_broker("kafka")
def test_sigkilled_worker_leaves_exactly_one_decision_per_transaction(stack, worker_factory):
    n = 120_000
    produce(stack, "transactions", _transactions(n, int(time.time() * 1000)))
    committed = DecisionsTopic(stack)
    everything = DecisionsTopic(stack, "read_uncommitted")
    worker = worker_factory(extra_env=EXACTLY_ONCE)
    kills_at, cut_short = [], 0
    for share in (0.1, 0.35, 0.6):  # three SIGKILLs during the drain, at growing progress
        wait_for(committed.read, 180, f"{share:.0%} of decisions committed", worker, ok=lambda d: d >= share * n)
        cut_short = _kill_inside_a_transaction(worker, committed, everything, cut_short)
        kills_at.append(len(committed.seen))
        worker = worker_factory(extra_env=EXACTLY_ONCE)
    assert all(0 < k < n for k in kills_at), kills_at  # every kill came in the middle of the drain
    wait_for(committed.read, 300, f"all {n} decisions committed", worker, ok=lambda d: d >= n)
    time.sleep(2.0)  # anything late (a duplicate) has time to arrive
    committed.drain()
    repeated = {k: c for k, c in committed.seen.items() if c > 1}
    assert not repeated, f"{len(repeated)} transactions decided more than once, e.g. {list(repeated.items())[:5]}"
    assert set(committed.seen) == {f"eo-{i}" for i in range(n)}

    # The kills did cut transactions short: uncommitted readers see their outputs, read-committed ones don't.
    everything.drain()
    aborted = sum(everything.seen.values()) - n
    committed.close()
    everything.close()
    assert "exactly once: each batch's outputs and input offsets commit in one transaction" in worker.log_text()
    assert aborted > 0, "no kill landed inside an open transaction"


@pytest.mark.only_broker("tansu")
def test_exactly_once_on_tansu_says_so_and_runs_at_least_once(stack, worker_factory):
    worker = worker_factory(extra_env=EXACTLY_ONCE)
    produce(stack, "transactions", _transactions(50, int(time.time() * 1000)))
    decided = DecisionsTopic(stack, "read_uncommitted")
    wait_for(decided.read, 90, "50 decisions", worker, ok=lambda d: d >= 50)
    decided.close()
    log = worker.log_text()
    assert "exactly_once asked for, but the broker" in log, log[-3000:]
    assert "at least once" in log
