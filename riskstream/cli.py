"""The one riskstream CLI. Each subcommand is a module of ``riskstream.commands`` that exposes
``register(subparsers)``, which adds its subcommand with ``set_defaults(run=callable)``; the
callable takes the parsed args and returns an exit code."""

from __future__ import annotations

import argparse
import importlib
import sys

from riskstream.settings import ConfigError

# Modules that add subcommands; imported lazily so that `riskstream --help` stays fast.
COMMAND_MODULES = [f"riskstream.commands.{name}" for name in (
    "stack", "demo", "chaos", "worker", "replay", "sql", "grafana", "simulate", "rules", "limits", "credit_line", "evaluate",
    "models",
    "var_backtest",
    "bench",
)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="riskstream",
        description="Real-time risk and fraud engine. Start with `riskstream demo`.",
    )
    parser.add_argument("--config", help="YAML settings file (also RISKSTREAM_CONFIG).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except ConfigError as exc:
        print(f"riskstream: configuration error:\n{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("riskstream: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
