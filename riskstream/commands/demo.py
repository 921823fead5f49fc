"""`riskstream demo`: the whole engine on the embedded stack, in one command."""

from __future__ import annotations

import argparse
from datetime import date, datetime, timezone

from riskstream.commands import add_broker_option, with_broker
from riskstream.demo import run_demo
from riskstream.settings import load_settings


def _start_ms(text: str) -> int:
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-10-01") from None
    return int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp() * 1000)


def _cmd_demo(args: argparse.Namespace) -> int:
    settings = with_broker(load_settings(args.config), args)
    return run_demo(settings, args.events, args.seconds, args.workers, start_ms=args.start)


def register(sub) -> None:
    p = sub.add_parser("demo", help="Run the whole engine on the embedded stack with a simulated stream.")
    p.add_argument("--events", type=int, default=100_000, help="Transactions to simulate (default 100,000).")
    p.add_argument("--seconds", type=float, default=0.0,
                   help="Spread production over this many seconds (default: as fast as the engine takes it).")
    p.add_argument("--workers", type=int, default=1, help="Faust workers sharing the consumer group.")
    p.add_argument("--start", type=_start_ms, default=None, metavar="DATE",
                   help="Start the simulated stream on this UTC day, so that every run sees the same stream "
                        "(default: eight weeks ago, ending an hour before now).")
    add_broker_option(p)
    p.set_defaults(run=_cmd_demo)
