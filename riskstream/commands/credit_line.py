"""`riskstream credit-line set|show|history`: credit lines from the command line.

    riskstream credit-line set c-000042 5000 --reason "raised after review"
    riskstream credit-line show c-000042
    riskstream credit-line history c-000042

``set`` publishes a ``limit_change`` to the ``account_events`` topic, keyed by the line: the
running workers apply it to Redis and store it in ``account_events`` with who set it and why,
the audit trail of every limit (approved loan applications add theirs there too).
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
import uuid

import orjson

from riskstream.settings import load_settings


def _set(args: argparse.Namespace) -> int:
    from confluent_kafka import Producer

    if args.limit < 0:
        print(f"riskstream credit-line: limit {args.limit:g}: expected 0 or more.", file=sys.stderr)
        return 2
    settings = load_settings(args.config)
    now_ms = int(time.time() * 1000)
    event = {"event_id": f"limit-{uuid.uuid4().hex[:12]}", "event_time": now_ms, "account_id": args.line,
             "kind": "limit_change", "amount": args.limit,
             "source": f"riskstream credit-line by {getpass.getuser()}" + (f": {args.reason}" if args.reason else "")}
    producer = Producer(settings.kafka_client_config())
    producer.produce(settings.topic("account_events"), key=args.line.encode(), value=orjson.dumps(event))
    if producer.flush(15) != 0:
        print("riskstream credit-line: the broker did not acknowledge the change; nothing was set.", file=sys.stderr)
        return 1
    print(f"limit of line {args.line} set to {args.limit:,.2f} (event {event['event_id']}); the workers apply it "
          f"in Redis as they read it.\nNext: riskstream credit-line show {args.line}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from riskstream.sinks.kafka import connect_redis
    from riskstream.streams.ledger import RedisLedger

    settings = load_settings(args.config)
    states = RedisLedger(connect_redis(settings)).state(args.lines)
    for line in args.lines:
        st = states.get(line)
        if st is None:
            print(f"{line}: no credit line")
            continue
        print(f"{line}: limit {st.limit / 100:,.2f}, balance {st.balance / 100:,.2f}, reserved "
              f"{st.reserved / 100:,.2f}, available {st.available / 100:,.2f} ({st.utilisation:.0%} used)")
    return 0 if states else 1


def _history(args: argparse.Namespace) -> int:
    from riskstream.sinks.clickhouse import run_query

    settings = load_settings(args.config)
    line = args.line.replace("'", "''")
    print(run_query(settings, "SELECT event_time, kind, amount, source, status, limit_after, balance_after, "
                    f"reserved_after FROM account_events FINAL WHERE account_id = '{line}' ORDER BY event_time",
                    "pretty").decode(), end="")
    return 0


def register(sub) -> None:
    p = sub.add_parser("credit-line", help="Set, show and audit credit lines (limit, balance, reserved, available).",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmds = p.add_subparsers(dest="credit_line_command", metavar="SUBCOMMAND")
    p.set_defaults(run=lambda args: (p.print_help(), 2)[1])
    s = cmds.add_parser("set", help="Publish a new limit for a line (created if new); audited in account_events.")
    s.add_argument("line", help="the line: an account_id, or the customer_id of a customer's line")
    s.add_argument("limit", type=float, help="the new limit, in the line's currency")
    s.add_argument("--reason", default="", help="why (stored with the change)")
    s.set_defaults(run=_set)
    s = cmds.add_parser("show", help="A line's limit, balance, reserved and available credit, from Redis.")
    s.add_argument("lines", nargs="+")
    s.set_defaults(run=_show)
    s = cmds.add_parser("history", help="Every event of a line and the line after it, from ClickHouse.")
    s.add_argument("line")
    s.set_defaults(run=_history)
