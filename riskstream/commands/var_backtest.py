"""`riskstream var-backtest FILE`: prove a VaR model right (or wrong) on any daily price history.

Each model forecasts one-day VaR and ES for every day from the returns before it only; the
forecasts are then tested against the returns that followed (``detectors.var_backtest``):
exceptions against the expected number, Kupiec, Christoffersen independence and conditional
coverage, the Basel traffic light over every 250-day window, and Acerbi-Szekely's ES test.

    riskstream var-backtest sp500.csv --date-column Date --price-column "Adj Close" --model all
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from riskstream.detectors.var_backtest import backtest
from riskstream.detectors.var_models import DEFAULT_MODEL, MODELS, forecast

MIN_HISTORY = 500  # returns before the first tested day: the longest model's first fit


class BacktestInputError(Exception):
    """The file or the arguments; the message says what to do."""


def read_prices(path: str | Path, date_column: str, price_column: str) -> tuple[np.ndarray, np.ndarray]:
    """Dates (datetime64[D]) and prices of a CSV or Parquet file, sorted by date."""
    import pyarrow as pa
    import pyarrow.compute as pc

    path = Path(path)
    if not path.exists():
        raise BacktestInputError(f"{path}: file not found.")
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    elif path.suffix.lower() in (".csv", ".gz", ".bz2", ".zst"):
        import pyarrow.csv as pacsv

        table = pacsv.read_csv(path)
    else:
        raise BacktestInputError(f"{path}: expected a .csv or .parquet file.")
    for column, flag in ((date_column, "--date-column"), (price_column, "--price-column")):
        if column not in table.column_names:
            raise BacktestInputError(f"{path.name}: no column {column!r} ({flag}); its columns are: "
                                     f"{', '.join(table.column_names)}.")
    dates = table.column(date_column)
    if pa.types.is_string(dates.type) or pa.types.is_large_string(dates.type):
        try:
            dates = pc.strptime(pc.utf8_slice_codeunits(dates, 0, 10), format="%Y-%m-%d", unit="s")
        except pa.ArrowInvalid as exc:
            raise BacktestInputError(f"{path.name}: {date_column!r} holds a value that is not a YYYY-MM-DD date "
                                     f"({exc}).") from None
    days = dates.cast(pa.timestamp("s")).to_numpy(zero_copy_only=False).astype("datetime64[D]")
    prices = table.column(price_column).cast(pa.float64()).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(~np.isfinite(prices) | (prices <= 0))
    if len(bad):
        rows = ", ".join(str(int(i) + 2) for i in bad[:5])  # + header line, 1-based
        raise BacktestInputError(f"{path.name}: {len(bad)} price(s) missing or not positive in {price_column!r} "
                                 f"(file lines {rows}{', ...' if len(bad) > 5 else ''}).")
    order = np.argsort(days, kind="stable")
    return days[order], prices[order]


def run_backtest(days: np.ndarray, prices: np.ndarray, models: list[str], confidence: float,
                 first_day: np.datetime64 | None = None, say=print) -> dict[str, Any]:
    returns = np.diff(np.log(prices))
    return_days = days[1:]
    start = max(MIN_HISTORY, int(np.searchsorted(return_days, first_day)) if first_day is not None else 0)
    if start >= len(returns) - 20:
        raise BacktestInputError(f"{len(prices):,} prices: the models need {MIN_HISTORY} returns of history "
                                 "before the first tested day and some days to test; give a longer history.")
    results: dict[str, Any] = {"confidence": confidence, "first_day": str(return_days[start]),
                               "last_day": str(return_days[-1]), "models": {}}
    forecasts = {}
    for name in models:
        t0 = time.perf_counter()
        f = forecast(name, returns, confidence)
        forecasts[name] = f
        res = backtest(returns[start:], f.var[start:], f.es[start:], confidence)
        res["seconds"] = round(time.perf_counter() - t0, 2)
        results["models"][name] = res
        say(f"  {name:<12} {res['exceptions']:>4} exceptions ({res['expected']:.1f} expected) in "
            f"{res['seconds']:.1f}s")
    return {"results": results, "forecasts": forecasts, "returns": returns, "days": return_days, "start": start}


def _verdict(res: dict[str, Any]) -> str:
    passed = (res["kupiec_lr"] < 3.84 and res["conditional_coverage_lr"] < 5.99 and res["basel"]["red"] == 0
              and res["es_test"]["p_value"] >= 0.05)
    return "pass" if passed else "fail"


def render(results: dict[str, Any]) -> str:
    c = results["confidence"]
    lines = [f"One-day VaR and ES at {c:.1%}, {results['first_day']} to {results['last_day']} "
             f"(each day forecast from the returns before it)", "",
             f"{'model':<12} {'days':>6} {'exc':>5} {'expected':>8} {'Kupiec LR':>10} {'CC LR':>7} "
             f"{'Basel g/y/r':>14} {'worst':>5} {'ES Z2':>7} {'Z2 p':>6}  verdict"]
    for name, r in results["models"].items():
        b = r["basel"]
        lines.append(f"{name:<12} {r['days']:>6} {r['exceptions']:>5} {r['expected']:>8.1f} {r['kupiec_lr']:>10.2f} "
                     f"{r['conditional_coverage_lr']:>7.2f} {b['green']:>5}/{b['yellow']}/{b['red']:<4} "
                     f"{b['worst']:>5} {r['es_test']['z2']:>7.3f} {r['es_test']['p_value']:>6.3f}  {_verdict(r)}")
    lines += ["", "Pass: Kupiec LR < 3.84 and conditional coverage LR < 5.99 (5% level), no 250-day window in the "
              "Basel red zone, ES test p >= 0.05."]
    return "\n".join(lines)


def write_days(out: str | Path, run: dict[str, Any], model: str) -> int:
    """One row per tested day: date, return, var, es, exception (for anyone to recompute)."""
    f, s = run["forecasts"][model], run["start"]
    r = run["returns"][s:]
    rows = ["date,return,var,es,exception"]
    for day, ret, var, es in zip(run["days"][s:], r, f.var[s:], f.es[s:]):
        rows.append(f"{day},{ret:.10g},{var:.10g},{es:.10g},{int(-ret > var)}")
    Path(out).write_text("\n".join(rows) + "\n")
    return len(rows) - 1


def plot(out: str | Path, run: dict[str, Any], model: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f, s = run["forecasts"][model], run["start"]
    days, r = run["days"][s:].astype("datetime64[D]").astype(object), run["returns"][s:]
    exc = -r > f.var[s:]
    fig, ax = plt.subplots(figsize=(12, 5), dpi=110)
    ax.plot(days, r, lw=0.5, color="0.55", label="daily log return")
    ax.plot(days, -f.var[s:], lw=0.8, color="tab:blue", label=f"-VaR {f.confidence:.0%} ({model})")
    ax.plot(days, -f.es[s:], lw=0.6, color="tab:purple", alpha=0.7, label=f"-ES {f.confidence:.0%}")
    ax.scatter(np.asarray(days, dtype=object)[exc], r[exc], s=12, color="tab:red", zorder=3,
               label=f"exceptions ({int(exc.sum())})")
    ax.set_title(f"One-day VaR backtest: {model}")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def _cmd(args: argparse.Namespace) -> int:
    models = list(MODELS) if args.model == "all" else [args.model]
    if args.model != "all" and args.model not in MODELS:
        print(f"riskstream var-backtest: unknown --model {args.model!r}; choose one of: all, {', '.join(MODELS)}.",
              file=sys.stderr)
        return 2
    if not 0.5 < args.confidence < 1.0:
        print(f"riskstream var-backtest: --confidence {args.confidence}: expected a level such as 0.99.", file=sys.stderr)
        return 2
    chosen = args.model if args.model != "all" else DEFAULT_MODEL
    say = (lambda m: print(m, file=sys.stderr, flush=True))
    try:
        t0 = time.perf_counter()
        days, prices = read_prices(args.file, args.date_column, args.price_column)
        first = np.datetime64(args.first_day) if args.first_day else None
        say(f"var-backtest: {len(prices):,} prices of {Path(args.file).name}, {days[0]} to {days[-1]}")
        run = run_backtest(days, prices, models, args.confidence, first, say)
    except BacktestInputError as exc:
        print(f"riskstream var-backtest: {exc}", file=sys.stderr)
        return 2
    results = run["results"]
    if args.out:
        n = write_days(args.out, run, chosen)
        say(f"var-backtest: {n:,} days of {chosen} written to {args.out}")
    if args.plot:
        plot(args.plot, run, chosen)
        say(f"var-backtest: chart of {chosen} written to {args.plot}")
    if args.json:
        print(orjson.dumps(results, option=orjson.OPT_SERIALIZE_NUMPY).decode())
    else:
        print(render(results))
        print(f"\nDone in {time.perf_counter() - t0:.1f}s. Per-day figures: --out DAYS.csv; a chart: --plot OUT.png; "
              "the models are described in detectors/var_models.py.")
    return 0


def register(sub) -> None:
    p = sub.add_parser("var-backtest", help="Backtest one-day VaR/ES models on a daily price history (CSV/Parquet).",
                       description=__doc__.split("\n\n")[1])
    p.add_argument("file", help="a .csv or .parquet file with a date and a price column")
    p.add_argument("--date-column", required=True, metavar="C", help="the date column (YYYY-MM-DD text or a date type)")
    p.add_argument("--price-column", required=True, metavar="C", help="the price column (e.g. an adjusted close)")
    p.add_argument("--confidence", type=float, default=0.99, help="VaR/ES level (default 0.99)")
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME",
                   help=f"one of {', '.join(MODELS)}, or all (default {DEFAULT_MODEL})")
    p.add_argument("--from", dest="first_day", metavar="YYYY-MM-DD",
                   help=f"first day to test (default: after {MIN_HISTORY} returns of history)")
    p.add_argument("--plot", metavar="OUT.png", help="chart of returns against VaR with the exceptions marked")
    p.add_argument("--out", metavar="DAYS.csv", help="date, return, var, es, exception per tested day")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    p.set_defaults(run=_cmd)
