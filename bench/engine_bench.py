"""End-to-end and in-process measurements of the transaction path (``riskstream bench``).

Every figure here comes from the real thing: the embedded stack (Tansu broker, Valkey, the
ClickHouse sink on chDB), real ``riskstream worker`` processes and the engine's own
functions. Nothing is asserted on timings: the numbers are for reading, and on a shared
2-core machine they are noisy (the bench's producer/consumer, the broker, the sink and the
workers all share the cores).

Pieces, each usable alone:

* ``bench.workload``: simulated transactions serialised once (orjson, keyed by card), preload;
* ``bench.harness``: the stack, worker processes, CPU and memory readings, percentiles;
* ``bench.broker_runs``: the drain with N workers, the per-event Faust and raw ``getmany``
  baselines, and the open-loop latency sweep against a running worker;
* ``bench.engine_runs``: the same arrivals straight into the driver (the engine's own share),
  the offline replay, the per-stage profile, and memory at many cards.

This module is the entry of the helper processes those runs start
(``python -m riskstream.bench.engine_bench faust-counter|memory|offline``).
"""

from __future__ import annotations

import argparse
import sys

import orjson

from riskstream.bench.broker_runs import faust_counter_main
from riskstream.bench.engine_runs import memory_at_cards, offline_main


# ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Entry point for the helper processes (``faust-counter``, ``memory``, ``offline``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "faust-counter":
        return faust_counter_main(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m riskstream.bench.engine_bench")
    sub = ap.add_subparsers(dest="cmd", required=True)
    mem = sub.add_parser("memory", help="state bytes per card and peak RSS at N distinct cards")
    mem.add_argument("--cards", type=int, default=1_000_000)
    off = sub.add_parser("offline", help="an offline replay of FILE in this fresh process (offline_replay_module)")
    off.add_argument("file")
    off.add_argument("--labels", default="")
    off.add_argument("--processes", type=int, default=1)
    off.add_argument("--data-dir", required=True)
    off.add_argument("--config", default=None)
    args = ap.parse_args(argv)
    if args.cmd == "offline":
        return offline_main(args)
    if args.cmd == "memory":
        res = memory_at_cards(args.cards, progress=lambda s: print(s, file=sys.stderr, flush=True))
        print(orjson.dumps(res).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
