"""`riskstream chaos`: kill workers and freeze services while the demo's streams flow, then
count what came out (``riskstream.chaos``)."""

from __future__ import annotations

import argparse
import shutil

from riskstream.commands import add_broker_option, with_broker
from riskstream.settings import load_settings


def _cmd_chaos(args: argparse.Namespace) -> int:
    from riskstream.chaos import run_chaos

    settings = with_broker(load_settings(args.config), args)
    # Its own data directory, emptied first: the accounting counts this run's rows only, and a
    # stack the user has up elsewhere is left alone.
    data_dir = settings.data_dir.resolve() / "chaos"
    shutil.rmtree(data_dir, ignore_errors=True)
    settings = settings.model_copy(update={"data_dir": data_dir})
    return run_chaos(settings, args.events, args.kills, args.workers, args.rate, args.outages,
                     args.valkey_seconds, args.sink_seconds, args.seed)


def register(sub) -> None:
    p = sub.add_parser("chaos", help="Kill workers (and freeze Valkey and the sink) during a run; "
                                     "print the accounting: events, decided, lost, repeats.")
    p.add_argument("--events", type=int, default=50_000, help="Transactions to simulate (default 50,000), "
                                                              "with the other streams of the demo.")
    p.add_argument("--kills", type=int, default=5, help="Worker SIGKILLs at random moments (default 5).")
    p.add_argument("--workers", type=int, default=2, help="Workers sharing the group (default 2).")
    p.add_argument("--rate", type=float, default=4000.0, help="Messages per second fed (default 4,000).")
    p.add_argument("--outages", action="store_true", help="Also freeze Valkey, then the sink, while it flows.")
    p.add_argument("--valkey-seconds", type=float, default=30.0, help="How long Valkey is frozen (default 30).")
    p.add_argument("--sink-seconds", type=float, default=60.0, help="How long the sink is frozen (default 60).")
    p.add_argument("--seed", type=int, default=11, help="Seed of the fault schedule.")
    add_broker_option(p)
    p.set_defaults(run=_cmd_chaos)
