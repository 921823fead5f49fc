"""What the credit check costs a worker's batch, against a real Valkey (the embedded one):

    .venv/bin/python -m riskstream.bench.ledger_bench [--json]

* the line lookup every transaction batch pays (``RedisLedger.known``: one LLEN of the log of
  line creations, and the lines created since), with 150 lines;
* the atomic script (``RedisLedger.apply``) for batches of 1,000 authorisations spread over
  100 lines, in authorisations per second, and per batch p50 / p99;
* the same with two clients at once (two workers on other partitions): the total rate, and
  that no line went below zero.

Client and Valkey share the 2-core machine. Start-up (Valkey, imports) is in the wall time of
the command, not in the figures.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def run(batches: int = 60, say=lambda s: print(s, file=sys.stderr, flush=True)) -> dict:
    from riskstream.settings import Settings
    from riskstream.sinks.kafka import connect_redis
    from riskstream.stack import EmbeddedStack
    from riskstream.streams.ledger import LedgerOp, RedisLedger

    with tempfile.TemporaryDirectory(prefix="riskstream-ledger-") as tmp:
        settings = Settings(data_dir=Path(tmp))
        stack = EmbeddedStack(settings, with_sink=False)  # the broker starts too; Valkey is what is measured
        stack.start()
        try:
            url = settings.stack_state()["redis"]
            from pydantic import SecretStr

            settings = settings.model_copy(update={"redis_url": SecretStr(url)})
            ledger = RedisLedger(connect_redis(settings))
            ledger.apply([LedgerOp("set_limit", f"line-{k}", "open", 10**9) for k in range(100)])
            ledger.apply([LedgerOp("set_limit", f"cust-{k}", "open", 10**9) for k in range(0, 5000, 100)])
            ledger.known()
            t = time.perf_counter()
            for _ in range(200):
                ledger.known()
            lookup_ms = (time.perf_counter() - t) / 200 * 1000

            def batch(worker: int, b: int) -> list:
                rng = random.Random(worker * 100_000 + b)
                return [LedgerOp("auth", f"line-{rng.randrange(100)}", f"w{worker}-{b}-{k}", rng.randint(100, 20_000))
                        for k in range(1000)]

            say(f"ledger bench: {batches} batches of 1,000 authorisations, one client ...")
            times = []
            for b in range(batches):
                ops = batch(0, b)
                t = time.perf_counter()
                ledger.apply(ops)
                times.append(time.perf_counter() - t)
            one_rate = batches * 1000 / sum(times)
            say("ledger bench: two clients at once ...")
            states: list = []

            def client(w: int) -> None:
                mine = RedisLedger(connect_redis(settings))
                for b in range(batches):
                    states.extend(mine.apply(batch(w, b)))

            t = time.perf_counter()
            threads = [threading.Thread(target=client, args=(w,)) for w in (1, 2)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            two_rate = 2 * batches * 1000 / (time.perf_counter() - t)
        finally:
            stack.stop()
    ms = np.asarray(times) * 1000
    return {"line_lookup_per_batch_ms": round(lookup_ms, 3),
            "script_batch_1000_ms": {"p50": round(float(np.percentile(ms, 50)), 2),
                                     "p99": round(float(np.percentile(ms, 99)), 2)},
            "authorisations_per_s_one_client": round(one_rate), "authorisations_per_s_two_clients": round(two_rate),
            "lowest_available_cents_two_clients": int(min(s.available for s in states))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m riskstream.bench.ledger_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    res = run()
    if args.json:
        print(json.dumps(res))
        return 0
    s = res["script_batch_1000_ms"]
    print(f"line lookup per transaction batch: {res['line_lookup_per_batch_ms']:.3f} ms\n"
          f"script, batches of 1,000 authorisations: p50 {s['p50']:.2f} ms, p99 {s['p99']:.2f} ms; "
          f"{res['authorisations_per_s_one_client']:,} authorisations/s with one client, "
          f"{res['authorisations_per_s_two_clients']:,}/s with two at once "
          f"(lowest available credit seen: {res['lowest_available_cents_two_clients'] / 100:,.2f})\n"
          f"Done in {time.perf_counter() - t0:.1f}s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
