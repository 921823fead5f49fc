"""`riskstream evaluate`: model quality from the decisions table and the labels (fraud or credit)."""

from __future__ import annotations

import argparse
import sys
from datetime import date

import orjson

from riskstream.detectors.evaluate import evaluate


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from riskstream.settings import load_settings
    from riskstream.sinks.clickhouse import QueryError

    settings = load_settings(args.config)
    if args.start is None or args.to is None:
        # Default: every decision of the stream (first to last event day).
        from riskstream.sinks.clickhouse import run_query

        lo, hi = run_query(settings, "SELECT toDate(min(event_time)), toDate(max(event_time)) FROM decisions "
                                     f"FINAL WHERE stream = '{args.stream}'", "tsv").decode().split()[-2:]
        args.start = args.start or date.fromisoformat(lo)
        args.to = args.to or date.fromisoformat(hi)
    if args.to < args.start:
        print("riskstream evaluate: --to is before --from", file=sys.stderr)
        return 2
    try:
        if args.stream == "loan_applications":
            return _credit(settings, args)
        budgets = (args.review_budget or settings.review_budget or 0.005,
                   args.step_up_budget or settings.step_up_budget or 0.02)
        r = evaluate(settings, args.start, args.to, budgets)
    except QueryError as exc:
        print(f"riskstream evaluate: ClickHouse said:\n{str(exc)[:2000]}", file=sys.stderr)
        return 1
    scores = {name: m.pop("_scores") for name, m in r.get("models", {}).items()}
    if args.plot and scores:
        from riskstream.detectors.evaluation_plot import plot_models

        plot_models(args.plot, r, scores)
    if args.json:
        print(orjson.dumps(r).decode())
        return 0 if r["decisions"] else 1
    print(f"Decisions {r['from']} .. {r['to']} (stream 'transactions'): {r['decisions']:,}")
    if r["decisions"] == 0:
        print("Nothing to evaluate. Next: run the worker (`riskstream demo`) or widen --from/--to.")
        return 1
    print(f"  labelled: {r['labelled']:,}   frauds: {r['frauds']:,}   days: {r['days']}   "
          f"model versions: {r['model_versions']}")
    print(f"  ROC AUC                 {r['roc_auc']:.3f}")
    print(f"  average precision       {r['average_precision']:.3f}")
    print(f"  Card Precision@100/day  {r['card_precision_at_100']:.3f}")
    cold = r.get("cold_start", {})
    if cold.get("decisions"):
        print(f"  cold start: {cold['decisions']:,} decisions on {cold['days']} day(s) decided by the rules and the "
              "anomaly score while the model warmed up")
        if cold.get("several_models_note"):
            print(f"  {cold['several_models_note']}")
    if r.get("models"):
        review, step_up = next(iter(r["models"].values()))["review_budget"]["share"], \
            next(iter(r["models"].values()))["step_up_budget"]["share"]
        print(f"  {'per model':<42} {'decisions':>10} {'frauds':>7} {'ROC AUC':>8} {'AP':>6} {'CP@100':>7}   "
              f"precision / recall at {review:.1%} a day (review), {step_up:.1%} (step-up)")
        for name, m in r["models"].items():
            rb, sb = m["review_budget"], m["step_up_budget"]
            print(f"  {name:<42} {m['decisions']:>10,} {m['frauds']:>7,} {m['roc_auc']:>8.3f} "
                  f"{m['average_precision']:>6.3f} {m['card_precision_at_100']:>7.3f}   "
                  f"{rb['precision']:.3f} / {rb['recall']:.3f}, {sb['precision']:.3f} / {sb['recall']:.3f}")
        for name, m in r["models"].items():
            if name.startswith("  "):
                continue
            print(f"  calibration, {name}: probability given -> fraud rate seen")
            for row in m["calibration"]:
                thin = "" if row["judged"] else "  (too few to judge)"
                print(f"    {row['pd_from']:7.2%}-{row['pd_to']:7.2%}  {row['n']:>8,}  given {row['mean_pd']:7.2%}  "
                      f"seen {row['default_rate']:7.2%}  gap {row['gap']:+7.2%}{thin}")
    print("  (unlabelled decisions count as legit: evaluate days at least 7 days old, once chargebacks are in)")
    if args.plot:
        print(f"Chart: {args.plot}")
    if r["frauds"] == 0:
        print("Next: no fraud labels in this window; load labels (`riskstream simulate` writes them) and rerun.")
    else:
        print("Next: look at the missed fraud: riskstream sql \"SELECT d.event_id, d.score, d.reasons FROM decisions "
              "AS d FINAL JOIN labels AS l ON d.event_id = l.event_id WHERE l.is_positive AND d.decision = "
              "'approve' ORDER BY d.score LIMIT 20\"")
    return 0


def _credit(settings, args: argparse.Namespace) -> int:
    from riskstream.detectors.credit_evaluation import evaluate_credit
    from riskstream.rules.credit_policy import load_credit_policy_file

    policy = load_credit_policy_file(settings.credit_file)
    r = evaluate_credit(settings, args.start, args.to, policy.refer_pd)
    if args.json:
        print(orjson.dumps(r).decode())
        return 0 if r["decisions"] else 1
    print(f"Loan decisions {r['from']} .. {r['to']}: {r['decisions']:,}")
    if not r["decisions"]:
        print("Nothing to evaluate. Next: replay loan applications (`riskstream replay FILE --stream "
              "loan_applications --label-column COL --label-delay 180d --offline`) or run `riskstream demo`.")
        return 1
    counts = ", ".join(f"{k} {v:,}" for k, v in sorted(r["decision_counts"].items()))
    print(f"  decisions: {counts}   model versions: {r['model_versions']}")
    print(f"  approval rate                       {r['approval_rate']:.1%} (PD under the refer line "
          f"{policy.refer_pd:.0%}: {r['approval_rate_at_refer_pd']:.1%})")
    rate = r["default_rate_approved"]
    print("  default rate among approved         " + (f"{rate:.1%} of {r['approved_with_outcome']:,} with an outcome"
                                                     if rate is not None else "no outcome known yet"))
    print(f"  outcomes known: {r['labelled']:,} ({r['defaults']:,} defaults)")
    if "roc_auc" in r:
        print(f"  ROC AUC (prequential)               {r['roc_auc']:.3f}")
    if "brier" in r:
        print(f"  Brier score                         {r['brier']:.4f}")
        gap = r["max_calibration_gap"]
        print("  calibration: PD decile      cases   mean PD   defaulted   gap"
              + (f"   (largest judged gap {gap:.1%})" if gap is not None else ""))
        for k, row in enumerate(r["calibration"], 1):
            thin = "" if row["judged"] else f"  (observed rate +/-{row['rate_se']:.1%}: too few cases to judge)"
            print(f"    {k:2d}  {row['pd_from']:6.1%}-{row['pd_to']:6.1%}  {row['n']:7,}  {row['mean_pd']:7.1%}  "
                  f"{row['default_rate']:9.1%}  {row['gap']:+6.1%}{thin}")
    print("Next: the declines and their reasons: riskstream sql \"SELECT reasons, count() FROM decisions FINAL "
          "WHERE stream = 'loan_applications' AND decision = 'decline' GROUP BY reasons ORDER BY count() DESC LIMIT 10\"")
    return 0


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="Model quality from decisions and labels: fraud (ROC AUC, AP, Card "
                                        "Precision@100) or credit (AUC, Brier, calibration, approval rates).")
    p.add_argument("--stream", choices=("transactions", "loan_applications"), default="transactions",
                   help="whose decisions: transactions (fraud, the default) or loan_applications (credit)")
    p.add_argument("--from", dest="start", type=_day, help="First day, YYYY-MM-DD (UTC); default: the first decided.")
    p.add_argument("--to", type=_day, help="Last day, inclusive, YYYY-MM-DD (UTC); default: the last decided.")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.add_argument("--review-budget", type=float, help="share of a day's transactions a review queue takes, for "
                   "precision and recall at it (default: RISKSTREAM_REVIEW_BUDGET, else 0.005)")
    p.add_argument("--step-up-budget", type=float, help="the same for step-ups (default: RISKSTREAM_STEP_UP_BUDGET, "
                   "else 0.02)")
    p.add_argument("--plot", metavar="PNG", help="also draw each model's precision-recall curve and calibration "
                   "into this PNG file")
    p.set_defaults(run=_cmd_evaluate)


# --------------------------------------------------------------------------------------
# riskstream evaluate
# --------------------------------------------------------------------------------------
def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None
