"""Faults while traffic flows, on the real embedded stack: a frozen sink, a frozen Valkey.

Each test paces transactions into a running worker, freezes a component with SIGSTOP for
longer than the consumer session, lets it go on, and then counts: every transaction has its
decision row in ClickHouse, and the frozen process is the same one (it recovered by itself).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import orjson
import pytest

from tests.conftest import produce, query, wait_for

pytestmark = pytest.mark.integration


def _paced(settings, prefix: str, total: int, per_second: int, stop: threading.Event) -> threading.Thread:
    """Produce ``total`` transactions at ``per_second`` in a background thread."""

    def run() -> None:
        now_ms = int(time.time() * 1000)
        step = max(1, per_second // 10)
        for start in range(0, total, step):
            if stop.is_set():
                return
            records = [(f"card-{i % 97}".encode(), orjson.dumps({
                "transaction_id": f"{prefix}{i}", "event_time": now_ms + i, "card_id": f"card-{i % 97}",
                "merchant_id": f"m-{i % 13}", "amount": 10.0 + i % 200, "country": "NL", "channel": "ecom"}))
                for i in range(start, min(total, start + step))]
            produce(settings, "transactions", records)
            time.sleep(0.1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _decided(settings, prefix: str) -> int:
    return query(settings, f"SELECT count() AS n FROM decisions FINAL WHERE event_id LIKE '{prefix}%'")[0]["n"]


def _freeze(pid: int, seconds: float) -> None:
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)


def test_sink_frozen_past_its_session_recovers_and_every_decision_lands(stack, worker_factory):
    """The operator's finding: a sink frozen past its consumer session crashed on resume with
    ``_NO_OFFSET`` and decisions stopped reaching ClickHouse for good."""
    worker = worker_factory()
    sink_pid = stack.stack_state()["pids"]["sink"]
    stop = threading.Event()
    total = 8000
    feeder = _paced(stack, "fz-", total, 400, stop)
    wait_for(lambda: _decided(stack, "fz-"), 60, "the worker deciding", worker, ok=lambda n: n > 0)
    _freeze(sink_pid, 3 * stack.session_timeout_ms / 1000)
    feeder.join(60)
    wait_for(lambda: _decided(stack, "fz-"), 120, f"{total} decision rows", worker, ok=lambda n: n == total)
    assert os.kill(sink_pid, 0) is None, "the sink recovered by itself"
    assert stack.stack_state()["pids"]["sink"] == sink_pid
    sink_log = (stack.data_dir / "logs" / "sink.log").read_text(errors="replace")
    assert "Traceback" not in sink_log, sink_log[-3000:]


def test_valkey_frozen_while_traffic_flows_every_decision_lands(stack, worker_factory):
    worker = worker_factory()
    valkey_pid = stack.stack_state()["pids"]["valkey"]
    stop = threading.Event()
    total = 8000
    feeder = _paced(stack, "vk-", total, 400, stop)
    wait_for(lambda: _decided(stack, "vk-"), 60, "the worker deciding", worker, ok=lambda n: n > 0)
    _freeze(valkey_pid, 15)
    feeder.join(60)
    wait_for(lambda: _decided(stack, "vk-"), 120, f"{total} decision rows", worker, ok=lambda n: n == total)
    assert worker.proc.poll() is None, "the worker recovered by itself"
    open("/tmp/vk.log", "w").write(worker.log_text())
