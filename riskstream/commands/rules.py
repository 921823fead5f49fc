"""`riskstream rules validate|publish|pending|approve|reject|history|backtest`: the rule language
from the command line (fraud rule sets, and with ``--credit`` credit policies). Every publication
is audited (table ``audit``); with RISKSTREAM_REQUIRE_APPROVAL=true it waits for a second person.

    riskstream rules validate rules/default.yaml
    riskstream rules publish my_rules.yaml --as alice
    riskstream rules pending
    riskstream rules approve 20261205-101500-1a2b3c --as bob
    riskstream rules history
    riskstream rules backtest my_rules.yaml --from 2024-06-01 --to 2024-06-08
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path
from typing import Any, Callable, Mapping

from riskstream.rules.language import validate_rule_set
from riskstream.rules.model import KNOWN_COLUMNS, RuleSetError
from riskstream.rules.publishing import RULES_TOPIC, publish_rule_set, rule_history

# A history loader returns (columns, labels_is_fraud, event_day) for [date_from, date_to).
HistoryLoader = Callable[[Any, date, date], tuple[Mapping[str, Any], Any, Any]]


# ======================================================================================
# Commands
# ======================================================================================
def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise SystemExit(f"riskstream rules: cannot read {path}: {exc.strerror or exc}") from None


def _columns_arg(value: str | None) -> set[str]:
    if not value:
        return set(KNOWN_COLUMNS)
    return {c.strip() for c in value.split(",") if c.strip()}


def cmd_validate(args: argparse.Namespace) -> int:
    if args.credit:
        return _validate_credit(args.file)
    text = _read(args.file)
    try:
        rule_set = validate_rule_set(text, args.file, available_columns=_columns_arg(args.columns),
                                     base_dir=Path(args.file).parent)
    except RuleSetError as exc:
        print(f"{len(exc.errors)} error(s):", file=sys.stderr)
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 1
    print(rule_set.summary())
    if args.compile:
        from riskstream.rules.compiler import compile_rule_set

        compiled = compile_rule_set(rule_set, sorted(_columns_arg(args.columns)))
        print(f"compiled in {compiled.compile_seconds:.2f} s")
    return 0


def _validate_credit(path: str) -> int:
    """A credit policy file: its rules compiled over a loan batch, its settings checked."""
    from riskstream.rules.credit_policy import CreditPolicyError, load_credit_policy

    try:
        policy = load_credit_policy(_read(path), path)
    except CreditPolicyError as exc:
        print(f"{len(exc.errors)} error(s):", file=sys.stderr)
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 1
    rules = policy.rule_set.summary() if policy.rule_set is not None else "no policy rules"
    print(f"credit policy {policy.version}: {rules}; approve under PD {policy.refer_pd:.0%}, refer up to "
          f"{policy.decline_pd:.0%}, decline from there; offered at most {policy.income_share:g} x income and "
          f"{policy.max_amount:,.0f}")
    print("Next: RISKSTREAM_CREDIT_FILE=" + path + " riskstream worker (workers read it at start-up)")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from riskstream.settings import load_settings

    settings = load_settings(args.config)
    text = _read(args.file)
    try:
        if args.credit:
            from riskstream.rules.publishing import publish_credit_policy

            record = publish_credit_policy(settings, text, args.file, who=args.who)
        else:
            record = publish_rule_set(settings, text, args.file, base_dir=Path(args.file).parent,
                                      available_columns=_columns_arg(args.columns), who=args.who)
    except RuleSetError as exc:
        print(f"not published, {len(exc.errors)} error(s):", file=sys.stderr)
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 1
    said_published(record, "credit policy" if args.credit else "rule set", args.file)
    return 0


def said_published(record: dict[str, Any], noun: str, source: str) -> None:
    """What a publication did: in force, or waiting for a second person (maker-checker)."""
    if record.get("pending"):
        print(f"proposed {noun} {record['version']} from {source} as change {record['change_id']} by "
              f"{record['published_by']}; nothing changes until someone else approves it.")
        print(f"Next: riskstream rules approve {record['change_id']} --as <approver>   (or: rules reject)")
        return
    approved = f", approved by {record['approved_by']}" if record.get("approved_by") else ""
    print(f"published {noun} {record['version']} from {source} by {record['published_by']}{approved}; every running "
          "worker swaps it in (see its log).")
    print("Next: riskstream sql \"SELECT at, actor, action, subject, version FROM audit FINAL ORDER BY at DESC LIMIT 10\"")


def cmd_pending(args: argparse.Namespace) -> int:
    from riskstream.rules.publishing import pending_changes
    from riskstream.settings import load_settings

    changes = pending_changes(load_settings(args.config))
    for c in changes:
        print(f"{c['change_id']:<24} {c['kind']:<14} {c['version']:<24} by {c['published_by']:<12} "
              f"{c['published_at']}  {c.get('source_name', '')}")
    print(f"{len(changes)} change(s) waiting for approval." + (" Next: riskstream rules approve ID --as <you>"
                                                                 if changes else ""))
    return 0


def cmd_decide(args: argparse.Namespace) -> int:
    from riskstream.rules.publishing import ApprovalError, decide_change
    from riskstream.settings import load_settings

    approve = args.rules_command == "approve"
    try:
        record = decide_change(load_settings(args.config), args.change_id, approve, args.who)
    except (ApprovalError, RuleSetError) as exc:
        print(f"riskstream rules {args.rules_command}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a limit set or credit policy that no longer loads
        print(f"riskstream rules {args.rules_command}: change {args.change_id} refused: {exc}", file=sys.stderr)
        return 1
    if approve:
        said_published(record, record["kind"].replace("ruleset", "rule set").replace("_", " "), record["source_name"])
    else:
        print(f"rejected change {args.change_id} ({record['version']}, proposed by {record['published_by']}); "
              "nothing changed.")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    from riskstream.settings import load_settings

    settings = load_settings(args.config)
    from riskstream.rules.publishing import CREDIT_KEY, RULESET_KEY

    history = rule_history(settings, key=CREDIT_KEY if args.credit else RULESET_KEY)
    if not history:
        print(f"no rule set published yet on {settings.topic(RULES_TOPIC)}")
        return 0
    for i, rec in enumerate(history):
        mark = "  <- in force" if i == len(history) - 1 else ""
        print(f"{rec.get('published_at', '?'):<26} {rec.get('version', '?'):<24} "
              f"{rec.get('published_by', '?'):<12} {rec.get('source_name', '?')}{mark}")
    return 0


def _stored_history_loader(args: argparse.Namespace) -> HistoryLoader:
    """The stored ClickHouse history with features rebuilt as the worker had them
    (riskstream.rules.history)."""
    from functools import partial

    from riskstream.rules.history import WARMUP_DAYS, load_backtest_history

    return partial(load_backtest_history, warmup_days=getattr(args, "warmup_days", WARMUP_DAYS))


def run_backtest(args: argparse.Namespace, load_history: HistoryLoader | None = None) -> int:
    from riskstream.rules.compiler import backtest, compile_rule_set
    from riskstream.settings import load_settings

    text = _read(args.file)
    try:
        rule_set = validate_rule_set(text, args.file, base_dir=Path(args.file).parent)
    except RuleSetError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    settings = load_settings(args.config)
    loader = load_history or _stored_history_loader(args)
    columns, labels, days = loader(settings, args.date_from, args.date_to)
    n = len(labels)
    if n == 0:
        print(f"riskstream rules backtest: the ClickHouse history is empty between {args.date_from} and "
              f"{args.date_to}; run the worker (or `riskstream simulate`) to record transactions and labels "
              "first", file=sys.stderr)
        return 1
    print(f"backtesting {rule_set.version_tag} on {n:,} transactions ...", file=sys.stderr)
    try:
        compiled = compile_rule_set(rule_set, {c: getattr(v, "dtype", None) or "float64" for c, v in columns.items()})
    except RuleSetError as exc:
        print(f"the rule set needs columns the history does not have:\n{exc}", file=sys.stderr)
        return 1
    print(backtest(compiled, columns, labels, days).format_report())
    print(f"Next: riskstream rules publish {args.file}   (workers switch to it within seconds)")
    return 0


def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date like 2024-06-01, got {value!r}") from None


def register(subparsers: Any) -> None:
    rules = subparsers.add_parser("rules", help="Validate, publish, list and backtest fraud rule sets.",
                                  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = rules.add_subparsers(dest="rules_command", metavar="SUBCOMMAND")
    rules.set_defaults(run=lambda args: (rules.print_help(), 2)[1])

    p = sub.add_parser("validate", help="Check a rule set file; print a summary or every error (file:line).")
    p.add_argument("file")
    p.add_argument("--columns", help="Comma-separated columns the batch will have (default: the known features).")
    p.add_argument("--compile", action="store_true", help="Also compile the kernel and show how long it took.")
    p.add_argument("--credit", action="store_true",
                   help="The file is a credit policy (rules/credit.yaml): check its rules over loan applications "
                        "and its model, band and limit settings.")
    p.set_defaults(run=cmd_validate)

    p = sub.add_parser("publish", help="Validate and publish a rule set to the `rules` control topic.")
    p.add_argument("file")
    p.add_argument("--columns", help="Comma-separated columns the workers have (default: the known features).")
    p.add_argument("--credit", action="store_true",
                   help="The file is a credit policy: validated, then swapped in by every worker without a restart.")
    p.add_argument("--as", dest="who", help="Who publishes, for the audit table (default RISKSTREAM_OPERATOR, "
                                            "else the login name).")
    p.set_defaults(run=cmd_publish)

    p = sub.add_parser("pending", help="List changes waiting for approval (RISKSTREAM_REQUIRE_APPROVAL=true).")
    p.set_defaults(run=cmd_pending)
    for name, what in (("approve", "Approve a pending change (not your own): it is published at once."),
                       ("reject", "Reject a pending change (not your own): nothing changes.")):
        p = sub.add_parser(name, help=what)
        p.add_argument("change_id", metavar="ID")
        p.add_argument("--as", dest="who", help="Who decides, for the audit table.")
        p.set_defaults(run=cmd_decide)

    p = sub.add_parser("history", help="List every published rule set (or --credit policy), oldest first.")
    p.add_argument("--credit", action="store_true", help="The credit policies published instead.")
    p.set_defaults(run=cmd_history)

    p = sub.add_parser("backtest", help="Replay stored history through a rule set: hits, precision, recall.")
    p.add_argument("file")
    p.add_argument("--from", dest="date_from", type=_date, required=True, help="First day (YYYY-MM-DD).")
    p.add_argument("--to", dest="date_to", type=_date, required=True, help="Day after the last (YYYY-MM-DD).")
    p.add_argument("--warmup-days", type=int, default=30, metavar="DAYS",
                   help="Days of history before --from replayed first, so the features (velocities, "
                        "first-seen, fraud rates) have their state at the period start (default 30).")
    p.set_defaults(run=run_backtest)
