"""`riskstream sql` and `riskstream sink`: query ClickHouse; run the ClickHouse sink."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from riskstream.settings import load_settings
from riskstream.sinks.clickhouse import FORMATS, QueryError, run_query, run_sink, table_names


def _cmd_sql(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    try:
        out = run_query(settings, args.query, args.format)
    except QueryError as exc:
        print(f"riskstream sql: ClickHouse said:\n{str(exc)[:2000]}", file=sys.stderr)
        print("Tables: " + ", ".join(table_names()) + " (see README, 'Tables for analysts').", file=sys.stderr)
        return 1
    sys.stdout.write(out.decode(errors="replace"))
    return 0


def _cmd_sink(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    port = settings.sink_query_port

    def ready(p: int) -> None:
        print(f"sink: writing to {settings.clickhouse_url().split('@')[-1]}, queries on 127.0.0.1:{p}", flush=True)

    rows = run_sink(settings, stop, port, ready=ready, log=lambda s: print(s, flush=True))
    print(f"sink: stopped; rows written this run: {rows}", flush=True)
    return 0


def register(sub) -> None:
    p = sub.add_parser("sql", help="Query ClickHouse (works while the stack and workers run).")
    p.add_argument("query", help='SQL, e.g. "SELECT decision, count() FROM decisions FINAL GROUP BY decision"')
    p.add_argument("--format", default="pretty", choices=sorted(FORMATS), help="Output format.")
    p.set_defaults(run=_cmd_sql)
    s = sub.add_parser("sink", help="Run the ClickHouse sink (the embedded stack starts one for you).")
    s.set_defaults(run=_cmd_sink)
