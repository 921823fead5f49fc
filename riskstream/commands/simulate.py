"""`riskstream simulate`: the seeded card-fraud, market and credit simulator, to files."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from riskstream.sim_world import DEFAULT_FRAUD_RATE
from riskstream.simulate import simulate, stream_paths, summarize, write_simulation


def _parse_start(value: str) -> int:
    from riskstream.schemas.events import InvalidEvent, parse_event_time

    try:
        return parse_event_time(int(value) if value.isdigit() else value)
    except InvalidEvent as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _run(args: argparse.Namespace) -> int:
    began = time.perf_counter()

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"simulate [{time.perf_counter() - began:5.1f}s] {message}", file=sys.stderr, flush=True)

    try:
        stream_paths(args.out)
        sim = simulate(days=args.days, customers=args.customers, terminals=args.terminals, seed=args.seed,
                       start_ms=args.start, fraud_rate=args.fraud_rate, with_market=not args.no_market,
                       with_credit=not args.no_credit, progress=progress)
    except ValueError as exc:
        print(f"riskstream simulate: {exc}", file=sys.stderr)
        return 2
    generated = time.perf_counter() - began
    progress(f"writing {Path(args.out).suffix[1:]} files")
    written = write_simulation(sim, args.out)
    progress("done")
    print(summarize(sim, written, generated))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="Generate seeded synthetic transactions with labelled fraud, labels, market, positions, loans",
        description="Generate realistic, seeded input streams. Transactions go to --out; labels, market, "
                    "positions and loan applications next to it as <stem>.<stream><suffix>.",
    )
    p.add_argument("--days", type=int, default=7, help="length of the simulated span (default 7)")
    p.add_argument("--customers", type=int, default=2000,
                   help="cardholders; ~2.5 transactions each per day (default 2000)")
    p.add_argument("--terminals", type=int, default=500, help="terminals, at least 30 (default 500)")
    p.add_argument("--out", required=True, help="transactions file, .csv or .parquet")
    p.add_argument("--seed", type=int, default=7, help="same seed and arguments, same output (default 7)")
    p.add_argument("--start", type=_parse_start, default=None,
                   help="start of the span, ISO-8601 or epoch ms (default 2024-01-01T00:00Z)")
    p.add_argument("--fraud-rate", type=float, default=None,
                   help=f"target share of fraudulent transactions (default {DEFAULT_FRAUD_RATE})")
    p.add_argument("--no-market", action="store_true", help="skip market ticks and positions")
    p.add_argument("--no-credit", action="store_true", help="skip loan applications and their outcomes")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=_run)
