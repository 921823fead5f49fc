"""`riskstream evaluate`: model quality from the decisions table and the labels."""

from __future__ import annotations

import argparse
import sys
from datetime import date

from riskstream.detectors.evaluate import evaluate


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from riskstream.settings import load_settings
    from riskstream.sinks.clickhouse import QueryError

    settings = load_settings(args.config)
    if args.start is None or args.to is None:
        # Default: every decided transaction (first to last event day).
        from riskstream.sinks.clickhouse import run_query

        lo, hi = run_query(settings, "SELECT toDate(min(event_time)), toDate(max(event_time)) FROM decisions "
                                     "FINAL WHERE stream = 'transactions'", "tsv").decode().split()[-2:]
        args.start = args.start or date.fromisoformat(lo)
        args.to = args.to or date.fromisoformat(hi)
    if args.to < args.start:
        print("riskstream evaluate: --to is before --from", file=sys.stderr)
        return 2
    try:
        r = evaluate(settings, args.start, args.to)
    except QueryError as exc:
        print(f"riskstream evaluate: ClickHouse said:\n{str(exc)[:2000]}", file=sys.stderr)
        return 1
    print(f"Decisions {r['from']} .. {r['to']} (stream 'transactions'): {r['decisions']:,}")
    if r["decisions"] == 0:
        print("Nothing to evaluate. Next: run the worker (`riskstream demo`) or widen --from/--to.")
        return 1
    print(f"  labelled: {r['labelled']:,}   frauds: {r['frauds']:,}   days: {r['days']}   "
          f"model versions: {r['model_versions']}")
    print(f"  ROC AUC                 {r['roc_auc']:.3f}")
    print(f"  average precision       {r['average_precision']:.3f}")
    print(f"  Card Precision@100/day  {r['card_precision_at_100']:.3f}")
    print("  (unlabelled decisions count as legit: evaluate days at least 7 days old, once chargebacks are in)")
    if r["frauds"] == 0:
        print("Next: no fraud labels in this window; load labels (`riskstream simulate` writes them) and rerun.")
    else:
        print("Next: look at the missed fraud: riskstream sql \"SELECT d.event_id, d.score, d.reasons FROM decisions "
              "AS d FINAL JOIN labels AS l ON d.event_id = l.event_id WHERE l.is_positive AND d.decision = "
              "'approve' ORDER BY d.score LIMIT 20\"")
    return 0


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="Model quality (ROC AUC, AP, Card Precision@100) from decisions and labels.")
    p.add_argument("--from", dest="start", type=_day, help="First day, YYYY-MM-DD (UTC); default: the first decided.")
    p.add_argument("--to", type=_day, help="Last day, inclusive, YYYY-MM-DD (UTC); default: the last decided.")
    p.set_defaults(run=_cmd_evaluate)


# --------------------------------------------------------------------------------------
# riskstream evaluate
# --------------------------------------------------------------------------------------
def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None
