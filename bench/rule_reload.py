"""Rule hot-reload latency on a running worker: publish to the ``rules`` topic -> first decision
made under the new rule set.

    .venv/bin/python -m riskstream.bench.rule_reload [--rounds 4] [--rate 500]

Starts an embedded stack (broker, Valkey, ClickHouse sink) in a temporary directory and one
``riskstream worker``, feeds a steady trickle of transactions from a producer thread, and per
round publishes the built-in rule set plus one rule that declines a recognisable pattern
(merchant ``BENCH-TRAP``, one transaction in 25), with a new version each round. It measures,
from the moment ``publish_rule_set`` is called:

* ``ack``: the broker confirmed the rule set record;
* ``received``: the worker logged it (its log line, so to the millisecond of its clock);
* ``first decision``: ``decided_at`` of the first decision carrying the new ``rules_version``
  (the worker's clock, the same machine: no consumer lag of this bench in it);
* ``first decline``: the same for the first trap transaction declined by the new rule;
* ``seen``: when this bench read that decision off the ``decisions`` topic;
* ``recv->decide``: received to first decision, i.e. the worker's compile plus the batch
  that follows it.

The worker does not log how long its compile took, so the bench compiles the same text
with the same columns itself and reports that (``compile here``). Every process it starts is
stopped on exit, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import orjson

TRAP_MERCHANT = "BENCH-TRAP"
TRAP_EVERY = 25  # one trap transaction in 25: at 500/s one every 50 ms, small next to the latency


@dataclass
class Round:
    version: str
    publish: float  # wall clock (s) when publish_rule_set was called
    ack: float = float("nan")
    received: float = float("nan")
    first_decision: float = float("nan")
    first_decline: float = float("nan")
    seen: float = float("nan")
    compile_here: float = float("nan")

    def row(self) -> str:
        def ms(t: float) -> str:
            return f"{1000 * (t - self.publish):8.0f}" if t == t else "       -"

        swap = self.first_decision - self.received
        return (f"{self.version:<28} {ms(self.ack)} {ms(self.received)} {ms(self.first_decision)} "
                f"{ms(self.first_decline)} {ms(self.seen)} {1000 * swap if swap == swap else float('nan'):12.0f} "
                f"{1000 * self.compile_here:12.0f}")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rule_set_text(round_no: int, run_id: str) -> str:
    """The built-in rule set, renamed per round, plus the trap rule: a realistic compile."""
    from riskstream.rules.language import default_rule_set_text

    base = default_rule_set_text()
    base = re.sub(r'^version: .*$', f'version: "bench-{run_id}-{round_no}"', base, count=1, flags=re.M)
    return base.rstrip() + f"""
  - id: bench_trap_{round_no}
    version: 1
    description: Reload bench, round {round_no}; declines the trap merchant.
    action: decline
    reason: {{code: BENCH_TRAP_{round_no}, text: "trap merchant {{merchant_id}}"}}
    when: merchant_id == '{TRAP_MERCHANT}' and amount > {round_no}
"""


class Trickle(threading.Thread):
    """Transactions at a steady rate, now-stamped, a trap one every TRAP_EVERY."""

    def __init__(self, settings, rate: float):
        super().__init__(name="trickle", daemon=True)
        from confluent_kafka import Producer

        self.producer = Producer({**settings.kafka_client_config(), "linger.ms": 2})
        self.topic = settings.topic("transactions")
        self.rate = rate
        self.sent = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop_event.is_set():
            due = int((time.monotonic() - t0) * self.rate)
            while self.sent < due:
                i = self.sent
                card = f"card-{i % 2000:05d}"
                trap = i % TRAP_EVERY == 0
                rec = {"transaction_id": f"bench-{i}", "event_time": int(time.time() * 1000), "card_id": card,
                       "merchant_id": TRAP_MERCHANT if trap else f"M{i % 300:04d}",
                       "amount": 50.0 + (i % 97), "channel": "ecom" if i % 3 else "pos", "country": "FR"}
                self.producer.produce(self.topic, key=card.encode(), value=orjson.dumps(rec))
                self.sent += 1
            self.producer.poll(0)
            time.sleep(0.005)
        self.producer.flush(5)


class Decisions:
    """Reads the decisions topic from its end, with a short fetch wait (low read latency)."""

    def __init__(self, settings):
        from confluent_kafka import OFFSET_END, Consumer, TopicPartition

        self.consumer = Consumer({**settings.kafka_client_config(), "group.id": f"rule-reload-{uuid.uuid4().hex[:8]}",
                                  "enable.auto.commit": False, "fetch.wait.max.ms": 10})
        topic = settings.topic("decisions")
        meta = self.consumer.list_topics(topic, timeout=10).topics[topic]
        self.consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in meta.partitions])

    def poll(self, timeout: float = 0.05):
        for msg in self.consumer.consume(1000, timeout=timeout):
            if not msg.error():
                yield orjson.loads(msg.value())

    def close(self) -> None:
        self.consumer.close()


def log_time(log: Path, version: str) -> float:
    """Wall-clock time of the worker's "rule set <version> ...: compiling" line (local time;
    Faust's format ``[2024-06-01 12:00:00,123] [pid] [WARNING] ...`` or logging's)."""
    pattern = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})\]? .*rule set " + re.escape(version) + " ")
    for line in log.read_text(errors="replace").splitlines():
        m = pattern.search(line)
        if m:
            return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp() + int(m.group(2)) / 1000
    return float("nan")


def run(rounds: int, rate: float, timeout: float, data_dir: Path) -> list[Round]:
    from riskstream.demo import start_worker, stop_worker
    from riskstream.rules.publishing import publish_rule_set
    from riskstream.rules.compiler import compile_rule_set
    from riskstream.rules.language import validate_rule_set
    from riskstream.settings import Settings
    from riskstream.stack import EmbeddedStack
    from riskstream.streams.processors import transaction_rule_columns

    settings = Settings(data_dir=data_dir)
    stack = EmbeddedStack(settings)
    worker = trickle = decisions = None
    results: list[Round] = []
    _say(f"starting the embedded stack in {data_dir} ...")
    stack.start()
    try:
        state = settings.stack_state()
        client = settings.model_copy(update={"kafka_bootstrap": state["kafka"]})
        worker = start_worker(settings, state)
        log = data_dir.resolve() / "logs" / "worker-0.log"
        decisions = Decisions(client)
        trickle = Trickle(client, rate)
        trickle.start()
        _say(f"worker pid {worker.pid}; trickle at {rate:,.0f} transactions/s; waiting for its first decisions ...")
        deadline = time.monotonic() + 120
        while not any(True for _ in decisions.poll(0.2)):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker made no decision (exit code {worker.poll()}); see {log}")
        time.sleep(3.0)  # past start-up: JIT warm, consumer group settled
        for _ in decisions.poll(0.0):
            pass
        columns = transaction_rule_columns()  # what the worker compiles against
        run_id = uuid.uuid4().hex[:6]
        for k in range(1, rounds + 1):
            text = rule_set_text(k, run_id)
            version = validate_rule_set(text, "bench").version_tag
            r = Round(version, time.time())
            publish_rule_set(client, text, f"bench round {k}")
            r.ack = time.time()
            end = time.monotonic() + timeout
            while (r.first_decision != r.first_decision or r.first_decline != r.first_decline) and time.monotonic() < end:
                for d in decisions.poll():
                    if d.get("rules_version") != version:
                        continue
                    if r.first_decision != r.first_decision:
                        r.first_decision, r.seen = float(d["decided_at"]), time.time()
                    if d["decision"] == "decline" and any(f"BENCH_TRAP_{k}" in x for x in d.get("reasons", [])):
                        r.first_decline = float(d["decided_at"])
                if worker.poll() is not None:
                    raise RuntimeError(f"the worker exited ({worker.returncode}); see {log}")
            r.received = log_time(log, version)
            r.compile_here = compile_rule_set(validate_rule_set(text, "bench"), columns).compile_seconds
            results.append(r)
            _say(f"round {k}: {r.row()}")
            time.sleep(2.0)  # steady state again before the next publish
    finally:
        if trickle is not None:
            trickle.stop_event.set()
            trickle.join(10)
            trickle.producer = None
        if decisions is not None:
            decisions.close()
        if worker is not None:
            stop_worker(worker)
        gc.collect()  # Kafka clients nobody holds any more, before their broker goes away
        stack.stop()
    return results


def _on_sigterm(signum, frame) -> None:
    # As Ctrl-C, so the finally blocks stop the worker and the stack.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m riskstream.bench.rule_reload", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=4, help="Rule sets published, one after another (default 4).")
    p.add_argument("--rate", type=float, default=500.0, help="Transactions per second fed meanwhile (default 500).")
    p.add_argument("--timeout", type=float, default=30.0, help="Give up on a round after this many seconds.")
    p.add_argument("--keep", action="store_true", help="Keep the data directory (logs) afterwards.")
    args = p.parse_args(argv)
    data_dir = Path(tempfile.mkdtemp(prefix="rs-rule-reload-"))
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        results = run(args.rounds, args.rate, args.timeout, data_dir)
    finally:
        if args.keep:
            _say(f"kept {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    print(f"rule hot-reload, 1 worker, {args.rate:,.0f} transactions/s, {os.cpu_count()} CPU(s); "
          "ms after publish_rule_set was called")
    print(f"{'rule set':<28} {'ack':>8} {'received':>8} {'decision':>8} {'decline':>8} {'seen':>8} "
          f"{'recv->decide':>12} {'compile here':>12}")
    for r in results:
        print(r.row())
    done = [r for r in results if r.first_decision == r.first_decision]
    if done:
        worst = max(r.first_decision - r.publish for r in done)
        worst_decline = max((r.first_decline - r.publish for r in done if r.first_decline == r.first_decline),
                            default=float("nan"))
        print(f"max: first decision under the new rules {1000 * worst:.0f} ms, first trap declined "
              f"{1000 * worst_decline:.0f} ms after publishing ({len(done)}/{len(results)} rounds switched; "
              "target 5000 ms)")
    missing = len(results) - len(done)
    if missing:
        print(f"{missing} round(s) saw no decision under the new rule set within {args.timeout:.0f} s")
    return 0 if results and not missing else 1


if __name__ == "__main__":
    raise SystemExit(main())
