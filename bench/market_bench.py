"""Market-risk refresh costs in process (no broker): ``python -m riskstream.bench.market_bench``.

Builds 260 days of daily history for 100 instruments held by 1,000 portfolios of 5 positions,
and for one portfolio of 1,000 positions over 1,000 more instruments, through the market
processor the worker runs. Then measures:

* the refresh of the 1,000-position portfolio after one intraday tick of one of its
  instruments (the tick in, its figures and limit checks out), p50 / p99 over 300 ticks;
* ticks per second through the processor in batches of 1,000 ticks that touch all 1,000
  small portfolios (validated rows in; decoding is not included).

The history asks for GJR-GARCH refits of the 100 instruments with a year of returns; they run
in the helper process, and the bench waits for them before measuring, so the figures are
those of the steady state (a refit comes every 20 days per instrument).

A day's first tick of an instrument closes its previous day; the first ticks of the measured
day are sent before timing, so the figures are intraday ones.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import orjson
from pydantic import SecretStr

from riskstream.schemas.events import DAY_MS
from riskstream.settings import Settings

T0 = 1_700_000_000_000 - 1_700_000_000_000 % DAY_MS


def run(days: int = 260, seed: int = 0, say=lambda s: print(s, file=sys.stderr, flush=True)) -> dict:
    from riskstream.streams.driver import Driver

    market = Driver(Settings(data_dir="/tmp/riskstream-market-bench", pan_key=SecretStr("k" * 32)),
                    with_models=False).market
    rng = np.random.default_rng(seed)
    small = [f"I{i:03d}" for i in range(100)]
    large = [f"J{i:04d}" for i in range(1000)]
    say(f"market bench: {days} days of history for {len(small) + len(large):,} instruments ...")
    for day in range(days):
        names = small + (large if day >= days - 30 else [])
        market.process("market", [{"instrument": n, "event_time": T0 + day * DAY_MS + 3_600_000,
                                   "price": float(100 * np.exp(rng.normal(0, 0.02)))} for n in names], [])
    fits = market.book.fits
    t = time.perf_counter()
    asked = fits.wait() if fits is not None else 0  # the GJR-GARCH refits the history asked for
    fit_wait_s = time.perf_counter() - t
    today = T0 + days * DAY_MS
    positions = [{"portfolio_id": f"P{p:04d}", "instrument": n, "event_time": today, "desk": "",
                  "quantity": float(rng.integers(1, 1000)), "price": 100.0}
                 for p in range(1000) for n in rng.choice(small, 5, replace=False)]
    positions += [{"portfolio_id": "BIG", "instrument": n, "event_time": today, "quantity": 10.0, "price": 50.0,
                   "desk": ""} for n in large]
    market.process("positions", positions, [])
    market.process("market", [{"instrument": n, "event_time": today + 500, "price": 100.0}
                              for n in small + large], [])  # the day's first ticks
    latency = []
    for k in range(300):
        t = time.perf_counter()
        market.process("market", [{"instrument": large[k], "event_time": today + 1000 + k, "price": 100 + k / 100}], [])
        latency.append(time.perf_counter() - t)
    ms = np.asarray(latency) * 1000
    ticks = [{"instrument": small[i % 100], "event_time": today + 100_000 + i, "price": 100 + rng.normal()}
             for i in range(20_000)]
    t = time.perf_counter()
    for a in range(0, len(ticks), 1000):
        market.process("market", ticks[a:a + 1000], [])
    rate = len(ticks) / (time.perf_counter() - t)
    market.close()
    return {"model": market.book.model, "gjr_fits": {"asked": asked, "in_force": int(market.book.gjr.sum()),
                                                   "waited_s_after_history": round(fit_wait_s, 2)},
            "refresh_1000_positions_ms": {"p50": round(float(np.percentile(ms, 50)), 3),
                                          "p99": round(float(np.percentile(ms, 99)), 3)},
            "ticks_per_s_1000_portfolios": round(rate, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m riskstream.bench.market_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    res = run()
    if args.json:
        print(orjson.dumps(res).decode())
    else:
        r = res["refresh_1000_positions_ms"]
        print(f"1,000-position portfolio refreshed after one tick: p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms "
              f"(target p99 <= 1 ms)\n{res['ticks_per_s_1000_portfolios']:,.0f} ticks/s across 1,000 portfolios in "
              f"batches of 1,000 (target >= 100,000)\nVolatility filter {res['model']}: "
              f"{res['gjr_fits']['in_force']} of {res['gjr_fits']['asked']} GJR-GARCH refits in force "
              f"(fitted in a helper process; waited {res['gjr_fits']['waited_s_after_history']:.1f}s for them "
              f"after the history was built)\nDone in {time.perf_counter() - t0:.1f}s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
