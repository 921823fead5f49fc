"""`riskstream grafana export|push`: the risk desk's dashboard and alert rules."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from riskstream.sinks.grafana import ALERTS, PANELS, export, push


def _cmd_export(args: argparse.Namespace) -> int:
    paths = export(Path(args.out))
    for p in paths:
        print(p)
    print(f"{len(PANELS)} panels, {len(ALERTS)} alert rules. docker-compose.yml mounts {args.out}; "
          "or run `riskstream grafana push --url URL --token TOKEN` against a running Grafana.")
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    try:
        result = push(args.url, args.token, args.user, args.password)
    except Exception as exc:
        print(f"riskstream grafana push: {exc}\nCheck --url and the token (Administration > Service accounts), "
              "and that the ClickHouse data source plugin is installed.", file=sys.stderr)
        return 1
    print(f"dashboard {result['dashboard']} and {result['alert_rules']} alert rules are on {args.url}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("grafana", help="Risk-desk dashboard and alert rules for Grafana.")
    gs = p.add_subparsers(dest="grafana_command", metavar="export|push", required=True)
    e = gs.add_parser("export", help="Write provisioning files (data source, dashboard, alert rules).")
    e.add_argument("--out", default="deploy/grafana", help="Directory (default deploy/grafana).")
    e.set_defaults(run=_cmd_export)
    u = gs.add_parser("push", help="Create or update the dashboard and alert rules on a running Grafana.")
    u.add_argument("--url", required=True)
    u.add_argument("--token", help="Service account token (or --user/--password).")
    u.add_argument("--user")
    u.add_argument("--password")
    u.set_defaults(run=_cmd_push)
