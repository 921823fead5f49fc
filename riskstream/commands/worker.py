"""`riskstream worker`: a Faust worker against the configured (or embedded) stack."""

from __future__ import annotations

import argparse

from riskstream.settings import load_settings
from riskstream.streams.worker import run_worker


def _cmd_worker(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    return run_worker(settings)


def register(sub) -> None:
    p = sub.add_parser("worker", help="Run a Faust worker against the configured (or embedded) stack.")
    p.set_defaults(run=_cmd_worker)
