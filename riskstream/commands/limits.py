"""`riskstream limits validate|publish|history`: market-risk limit sets from the command line.

    riskstream limits validate limits.yaml
    riskstream limits publish limits.yaml      # every running worker swaps it in
    riskstream limits history
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from riskstream.rules.limits import LimitSetError, load_limits
from riskstream.commands.rules import said_published
from riskstream.rules.publishing import LIMITS_KEY, publish_limit_set, rule_history
from riskstream.settings import load_settings


def _read(path: str) -> str | None:
    p = Path(path)
    if not p.exists():
        print(f"riskstream limits: {p}: file not found.", file=sys.stderr)
        return None
    return p.read_text()


def _validate(args: argparse.Namespace) -> int:
    text = _read(args.file)
    if text is None:
        return 2
    try:
        limits = load_limits(text, args.file)
    except LimitSetError as exc:
        print(exc, file=sys.stderr)
        print(f"riskstream limits: {len(exc.errors)} error(s); nothing changed.", file=sys.stderr)
        return 1
    scopes = sorted({lim.scope for lim in limits.limits})
    print(f"{args.file}: {len(limits.limits)} limits over {', '.join(scopes) or 'nothing'}, version {limits.version}.")
    print("Next: riskstream limits publish " + args.file)
    return 0


def _publish(args: argparse.Namespace) -> int:
    text = _read(args.file)
    if text is None:
        return 2
    settings = load_settings(args.config)
    try:
        record = publish_limit_set(settings, text, args.file, who=args.who)
    except LimitSetError as exc:
        print(exc, file=sys.stderr)
        print("riskstream limits: not published; the running limits stay in force.", file=sys.stderr)
        return 1
    said_published(record, "limit set", args.file)
    return 0


def _history(args: argparse.Namespace) -> int:
    records = rule_history(load_settings(args.config), key=LIMITS_KEY)
    if not records:
        print("No limit set published yet (the worker uses RISKSTREAM_LIMITS_FILE, if set).")
        return 0
    for r in records:
        print(f"{r['published_at']}  {r['version']:<24} {r.get('published_by', '?'):<12} {r.get('source_name', '')}")
    print(f"{len(records)} publication(s); the last is in force.")
    return 0


def register(sub) -> None:
    p = sub.add_parser("limits", help="Validate, publish and list market-risk limit sets.",
                       description=__doc__.split("\n\n")[0])
    cmds = p.add_subparsers(dest="limits_command", metavar="COMMAND", required=True)
    v = cmds.add_parser("validate", help="check a limits file; errors name their line")
    v.add_argument("file")
    v.set_defaults(run=_validate)
    pub = cmds.add_parser("publish", help="validate, then send to every running worker")
    pub.add_argument("file")
    pub.add_argument("--as", dest="who", help="Who publishes, for the audit table.")
    pub.set_defaults(run=_publish)
    h = cmds.add_parser("history", help="every limit set published, oldest first")
    h.set_defaults(run=_history)
