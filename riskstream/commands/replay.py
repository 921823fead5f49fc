"""`riskstream replay FILE --stream NAME`: a recorded or simulated stream, in event-time order.

Online (default) the rows go to the stream's topic for the running workers
(``streams.online``); ``--offline`` needs no broker and runs the same driver in-process
(``streams.offline``). The file is read and checked by ``streams.reading``.

Example (offline, on a simulated file)::

    riskstream simulate --days 7 --out /tmp/tx.parquet
    riskstream replay /tmp/tx.parquet --stream transactions --label-column is_fraud \\
        --label-delay 7d --offline
    riskstream replay loans.csv --stream loan_applications --label-column outcome \\
        --label-positive bad --label-delay 180d --offline
"""

from __future__ import annotations

import argparse
import sys
import time

from riskstream.schemas.registry import STREAMS
from riskstream.settings import Settings, load_settings
from riskstream.streams.offline import default_processes, replay_offline
from riskstream.streams.online import replay_online
from riskstream.streams.reading import ReplayError, load_input, parse_duration, parse_maps


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_replay(args: argparse.Namespace, settings: Settings | None = None) -> int:
    settings = settings or load_settings(getattr(args, "config", None))
    if args.stream not in STREAMS:
        raise ReplayError(f"unknown --stream {args.stream!r}; choose one of: {', '.join(STREAMS)}.")
    if (args.label_delay or args.label_positive) and not args.label_column:
        raise ReplayError("--label-delay and --label-positive need --label-column (the column that says "
                          "which rows turned out bad: fraud, a default).")
    delay_ms = parse_duration(args.label_delay) if args.label_column else 0
    if args.label_column and not args.label_delay:
        raise ReplayError("--label-column needs --label-delay, e.g. --label-delay 7d for chargebacks or 180d "
                          "for loan outcomes (a zero delay would leak the outcome).")
    if args.rate is not None and args.rate <= 0:
        raise ReplayError(f"--rate {args.rate}: expected events per second > 0.")
    if args.offline and args.rate:
        raise ReplayError("--rate paces messages to the broker; it has no meaning with --offline.")
    requested = getattr(args, "processes", None)
    if requested is not None and requested < 1:
        raise ReplayError(f"--processes {requested}: expected 1 or more (1 = this process only).")
    if requested is not None and not args.offline:
        raise ReplayError("--processes splits an --offline replay; online, the running workers split the "
                          "stream by partition (start more with `riskstream worker`).")
    processes = requested or default_processes()
    if not args.offline:
        settings.kafka_client_config()  # fail before reading a big file when there is no broker
    if delay_ms and args.stream in ("transactions",):
        # Its labels arrive this long after their events: the fraud model waits as long
        # before it counts an unlabelled transaction as legit.
        settings = settings.model_copy(update={"label_delays": {
            **settings.label_delays, args.stream: {"replay": args.label_delay}}})
    t0 = time.perf_counter()
    data = load_input(args.file, args.stream, parse_maps(args.map), settings=settings,
                      label_column=args.label_column, label_delay_ms=delay_ms, validate=args.offline,
                      label_positive=args.label_positive)
    n_labels = len(data.labels.get("label_time", ()))
    late = int((data.labels["label_time"] > data.times_ms[-1]).sum()) if n_labels and data.n else 0
    _say(f"replay: {data.file_rows:,} rows of {data.path.name} as {args.stream}"
         + (f", {n_labels:,} outcome labels {args.label_delay} later"
            f" ({late:,} fall after the last row and are emitted at the end)" if args.label_column else "")
         + (f", {len(data.dead):,} invalid rows dead-lettered" if data.dead else "")
         + f" (read in {time.perf_counter() - t0:.1f}s)")
    if args.offline:
        if args.stream != "transactions" and requested is not None and requested > 1:
            _say(f"replay: note: --processes splits transactions by card; --stream {args.stream} runs in one process.")
        summary = replay_offline(data, settings, processes=processes)
        written = ", ".join(f"{k} {v:,}" for k, v in sorted(summary.rows_written.items()))
        prof = ", ".join(f"{k} {v:.1f}s" for k, v in summary.profile.items())
        what = "transactions" if args.stream == "transactions" else "rows"
        across = f" in {summary.processes} processes" if summary.processes > 1 else ""
        print(f"riskstream replay --offline: {summary.rows:,} {what} in {summary.seconds:.1f}s "
              f"({summary.rate:,.0f} {what}/s{across}, up to every row in ClickHouse; engine start-up "
              f"{summary.profile['setup']:.1f}s and closing the ClickHouse client "
              f"{summary.profile['clickhouse_close']:.1f}s more), {summary.labels:,} labels learned, "
              f"{summary.dead_letters:,} dead letters.")
        print(f"ClickHouse rows written: {written or 'none'}.")
        if summary.processes > 1:
            print(f"Time by stage (labels to send: summed over the {summary.processes} replay processes; "
                  f"receive, clickhouse_wait, setup and clickhouse_close: this process): {prof}.")
        else:
            print(f"Time by stage: {prof}.")
    else:
        summary = replay_online(data, settings, rate=args.rate)
        print(f"riskstream replay: produced {summary.rows:,} {args.stream} and {summary.labels:,} labels in "
              f"{summary.seconds:.1f}s ({(summary.rows + summary.labels) / max(summary.seconds, 1e-9):,.0f} "
              f"messages/s){' paced at ' + format(args.rate, ',g') + '/s' if args.rate else ''}.")
        print("The workers decide them as they arrive (start one with `riskstream worker` if none runs).")
    print('Next: riskstream sql "SELECT decision, count() FROM decisions FINAL GROUP BY decision"\n'
          '      riskstream sql "SELECT error, count() FROM dead_letters FINAL GROUP BY error"')
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    try:
        return run_replay(args)
    except ReplayError as exc:
        print(f"riskstream replay: {exc}", file=sys.stderr)
        return 2


def register(sub) -> None:
    p = sub.add_parser(
        "replay", help="Replay a CSV/Parquet file in event-time order (to the topics, or --offline in-process).",
        description="Replay a recorded or simulated stream in event-time order (stable sort). The time column "
                    "(event_time; label_time for --stream labels) may hold epoch milliseconds (integers), "
                    "ISO-8601 text (no zone = UTC) or Parquet/Arrow timestamps. Online, rows go to the "
                    "stream's topic as JSON, keyed like live producers; --offline scores them in-process "
                    "and writes the results to ClickHouse.",
        epilog="Example: riskstream replay tx.parquet --stream transactions --label-column is_fraud "
               "--label-delay 7d --offline",
    )
    p.add_argument("file", help="a .csv or .parquet file")
    p.add_argument("--stream", required=True, help=f"what the rows are: {', '.join(STREAMS)}")
    p.add_argument("--map", action="append", default=[], metavar="SRC=DEST",
                   help="rename a column, e.g. --map TX_AMOUNT=amount --map CUSTOMER_ID=card_id (repeatable)")
    p.add_argument("--label-column", metavar="COL",
                   help="ground-truth column (1/true/yes = bad: a fraud, a default), for any stream with outcomes "
                        "(transactions, loan_applications): each bad row yields a chargeback or default label "
                        "--label-delay after it, and for loans each other row a repaid label; COL is dropped "
                        "from the event")
    p.add_argument("--label-positive", metavar="VALUE",
                   help="the --label-column value that means bad, when it is a word like 'bad' (any case)")
    p.add_argument("--label-delay", metavar="DURATION",
                   help="how long until the label is known, e.g. 30m, 12h, 7d. Labels that fall after the "
                        "last row are still emitted, at the end")
    p.add_argument("--offline", action="store_true",
                   help="no broker: run the engine in-process and write results to ClickHouse")
    p.add_argument("--processes", type=int, metavar="N",
                   help=f"--offline, --stream transactions: split the cards over N processes (default: one "
                        f"core fewer than there are, for the ClickHouse writer: {default_processes()} here; 1 = "
                        "this process only), the way a topic's "
                        "partitions split traffic over online workers. Each process has its own model state, "
                        "like N workers each owning a share of the partitions, so scores can differ slightly "
                        "from a 1-process run; card-level features are identical. Other streams run in one "
                        "process")
    p.add_argument("--rate", type=float, metavar="N",
                   help="online only: pace to N messages/s (open loop, for latency tests)")
    p.set_defaults(run=_cmd_replay)

