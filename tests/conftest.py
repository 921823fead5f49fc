"""Shared fixtures: a real embedded stack (Tansu broker, Valkey, ClickHouse sink on chDB)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from pydantic import SecretStr

from riskstream.settings import Settings
from riskstream.stack import EmbeddedStack


def pytest_generate_tests(metafunc):
    """The broker under a test's stack: Tansu, and Apache Kafka too for tests marked
    ``both_brokers``; RISKSTREAM_TEST_BROKERS (e.g. ``kafka`` or ``tansu,kafka``) runs every
    stack test on those. The test id names the broker, so a failure on one says which."""
    if "stack_broker" not in metafunc.fixturenames:
        return
    chosen = [b.strip() for b in os.environ.get("RISKSTREAM_TEST_BROKERS", "").split(",") if b.strip()]
    brokers = chosen or ["tansu"]
    if not chosen and metafunc.definition.get_closest_marker("both_brokers"):
        brokers = ["tansu", "kafka"]
    only = metafunc.definition.get_closest_marker("only_broker")
    if only:  # a property one broker has and the other lacks (Kafka's transactions)
        brokers = [only.args[0]]
    metafunc.parametrize("stack_broker", brokers)


@pytest.fixture
def stack(tmp_path: Path, stack_broker: str):
    """An attached embedded stack on ``stack_broker``; yields settings that point clients at it."""
    settings = Settings(data_dir=tmp_path / "rs", session_timeout_ms=6000, broker=stack_broker)
    s = EmbeddedStack(settings)
    s.start()
    state = settings.stack_state()
    try:
        yield settings.model_copy(update={"kafka_bootstrap": state["kafka"], "redis_url": SecretStr(state["redis"])})
    finally:
        s.stop()


class Worker:
    """A real `riskstream worker` process against the test stack."""

    def __init__(self, settings: Settings, index: int = 0, extra_env: dict[str, str] | None = None):
        env = dict(os.environ)
        env.update({
            "RISKSTREAM_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "RISKSTREAM_REDIS_URL": settings.redis_url.get_secret_value(),
            "RISKSTREAM_DATA_DIR": str(settings.data_dir),
            "RISKSTREAM_SESSION_TIMEOUT_MS": str(settings.session_timeout_ms),
            **(extra_env or {}),
        })
        self.log = settings.data_dir / "logs" / f"test-worker-{index}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "riskstream", "worker"], env=env,
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig=None, timeout: float = 10.0) -> int:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(sig or signal.SIGTERM)
        return self.proc.wait(timeout)


@pytest.fixture
def worker_factory(stack):
    workers: list[Worker] = []

    def make(**kw) -> Worker:
        w = Worker(stack, index=len(workers), **kw)
        workers.append(w)
        return w

    yield make
    for w in workers:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait(5)


def produce(settings: Settings, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    from confluent_kafka import Producer

    p = Producer({**settings.kafka_client_config(), "linger.ms": 5})
    for key, value in records:
        while True:
            try:
                p.produce(settings.topic(topic), key=key, value=value)
                break
            except BufferError:  # the local queue is full: let it drain
                p.poll(0.05)
    assert p.flush(30) == 0


def query(settings: Settings, sql: str) -> list[dict]:
    from riskstream.sinks.clickhouse import run_query

    out = run_query(settings, sql, "json")
    return [orjson.loads(line) for line in out.splitlines() if line.strip()]


def wait_for(check, timeout: float, what: str, worker: Worker | None = None, ok=bool):
    """Poll ``check()`` until ``ok(result)``; return the result."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if ok(last):
            return last
        if worker is not None and worker.proc.poll() is not None:
            raise AssertionError(f"worker exited with {worker.proc.returncode} while waiting for {what}:\n"
                                 + worker.log_text()[-4000:])
        time.sleep(0.25)
    tail = ("\nworker log:\n" + worker.log_text()[-4000:]) if worker else ""
    raise AssertionError(f"timed out waiting for {what} (last: {last!r}){tail}")
