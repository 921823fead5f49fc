"""`riskstream bench`: the transaction path measured end to end on the embedded stack.

    riskstream bench                      # 200k transactions, rates 2k-20k/s, 1 and 2 workers
    riskstream bench --quick --json       # small sizes, one JSON object on stdout

Order of the run (in-process measurements first, while no stack competes for the cores):
offline replay, memory at many cards (own process), the latency sweep on a fresh stack with
one worker, then per worker count a fresh stack: preload, drain; on the first stack also the
Faust per-event and raw getmany baselines on the same topic, and the per-stage profile.
Progress goes to stderr; the report to stdout (to stderr with ``--json``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from riskstream.commands import add_broker_option, with_broker
from riskstream.settings import load_settings

TARGETS = {
    "e2e_tps": 50_000.0,
    "faust_ratio": 5.0,
    "p99_ms_at_10k": 25.0,
    "p50_ms_at_10k": 5.0,
    "offline_tps": 200_000.0,
    "rss_mb_at_1m_cards": 2048.0,
}


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _ints(text: str) -> list[int]:
    try:
        values = [int(float(v)) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("expected positive numbers")
    return values


class _Terminated(BaseException):
    """SIGTERM turned into an exception so that every `finally` stops its processes."""


def _on_sigterm(signum, frame) -> None:
    raise _Terminated()


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    from riskstream.bench import broker_runs, engine_runs, harness, workload

    base = with_broker(load_settings(args.config).model_copy(update={"session_timeout_ms": 6000}), args)
    if getattr(args, "guarantee", None):
        base = base.model_copy(update={"processing_guarantee": args.guarantee})
    quick = args.quick
    n = args.transactions or (20_000 if quick else 200_000)
    rates = args.rates or ([1000] if quick else [2000, 5000, 10000, 20000])
    worker_counts = args.workers or ([1] if quick else [1, 2])
    seconds = args.latency_seconds or (1.5 if quick else 10.0)
    cards = args.cards or (20_000 if quick else 1_000_000)
    # Kafka's JIT warms up in the first minute of traffic; Tansu is native code.
    warm_s = args.warmup_seconds if args.warmup_seconds is not None else (
        0.0 if base.broker != "kafka" else 5.0 if quick else 20.0)
    warm_rate = min(max(rates), 10_000)
    drain_warm = min(n, 20_000)  # decided untimed before each drain, while the group settles
    res: dict[str, Any] = {"machine": harness.machine_info(), "quick": quick, "broker": base.broker,
                           "config": {"transactions": n, "rates": rates, "workers": worker_counts,
                                      "latency_seconds": seconds, "memory_cards": cards, "warmup_seconds": warm_s,
                                      "batch_max_events": base.batch_max_events,
                                      "topic_partitions": base.topic_partitions,
                                      "processing_guarantee": base.processing_guarantee,
                                      # the worker's latency settings
                                      "batch_linger_ms": base.batch_linger_ms,
                                      "produce_linger_ms": base.produce_linger_ms,
                                      "fetch_max_wait_ms": base.fetch_max_wait_ms,
                                      "commit_interval_ms": base.commit_interval_ms,
                                      "service_linger_ms": args.service_linger_ms}}
    m = res["machine"]
    _say(f"riskstream bench on {m['cores']} cores ({m['cpu_model']}), {m['ram_gb']} GB, Python {m['python']}, "
         f"load {m['load_avg_at_start']}")
    t_all = time.monotonic()
    group = harness.ProcessGroup()
    stacks: list[harness.BenchStack] = []
    tmp = Path(tempfile.mkdtemp(prefix="riskstream-bench-"))
    finished = False
    try:
        latency_pool = int(sum(rates) * seconds + warm_rate * warm_s)
        # The engine-only latency runs once per linger, each on transactions of its own.
        lingers = sorted({0, base.batch_linger_ms})
        _say(f"\n== input: {n:,} transactions to preload + {latency_pool:,} for the latency sweep "
             f"+ {latency_pool * len(lingers):,} for the engine-only latency")
        msgs = workload.build_messages(n, extra=max(latency_pool * (1 + len(lingers)), drain_warm),
                                       progress=lambda s: _say(f"  {s}"))
        preload_msgs = msgs.head(n)

        _say("\n== offline replay (in process)")
        offline_settings = engine_runs.offline_settings(base, tmp / "offline")
        _say(f"  numba warm-up (compile or cache load): {engine_runs.warm_engine(offline_settings, preload_msgs):.1f}s")
        direct = engine_runs.offline_replay(offline_settings, preload_msgs, progress=_say)
        _say(f"  {direct['tps']:,.0f} transactions/s ({direct['path']})")
        by_processes = {}
        for procs in sorted({1} if quick else {1, os.cpu_count() or 1}):
            run = engine_runs.offline_replay_module(offline_settings.model_copy(
                update={"data_dir": tmp / f"offline-{procs}"}), preload_msgs, processes=procs, config=args.config)
            by_processes[str(procs)] = run
            _say(f"  {run['tps']:,.0f} transactions/s to the last row in ClickHouse ({run['tps_with_close']:,.0f} "
                 f"with closing chDB), {run['cpu_us_per_txn']:.1f} µs CPU each ({run['path']})")
            mix = run["decision_mix"]
            _say(f"    decided: {', '.join(f'{k} {v:.2%}' for k, v in mix['share'].items())}; "
                 f"fraud model ready for {mix['model_ready_share']:.0%} of them, {run['labels']:,} labels fed")
        best = max(by_processes.values(), key=lambda r: r["tps"])
        res["offline_replay"] = {**best, "by_processes": {k: v["tps"] for k, v in by_processes.items()},
                                 "runs": by_processes, "engine_only": direct}
        res["offline_replay_tps"] = res["offline_replay"]["tps"]

        _say(f"\n== engine-only latency (in process, no broker): open-loop arrivals, {seconds:.0f}s per rate, "
             f"batching as the worker does with a linger of {' and '.join(f'{x} ms' for x in lingers)}")
        res["engine_latency_ms"], _ = engine_runs.engine_latency(
            offline_settings.model_copy(update={"data_dir": tmp / "engine-latency"}), msgs, n + latency_pool,
            rates, seconds, lingers, progress=_say)

        _say(f"\n== memory: an Engine fed {cards:,} distinct cards (own process)")
        res["memory"] = engine_runs.memory_in_subprocess(cards, group, progress=lambda s: _say(f"  {s}"))
        mem = res["memory"]
        res["state_bytes_per_card"] = mem["state_bytes_per_card"]
        _say(f"  {mem['state_bytes_per_card']:,.0f} feature-state bytes per card, peak RSS {mem['peak_rss_mb']:,.0f} MB")

        from riskstream.bench import market_bench

        _say("\n== market risk: portfolio refresh in process (bench/market_bench.py)")
        res["market_risk"] = market_bench.run(days=60 if quick else 260, say=lambda s: _say(f"  {s}"))
        market = res["market_risk"]
        _say(f"  1,000-position refresh p50 {market['refresh_1000_positions_ms']['p50']:.2f} ms, p99 "
             f"{market['refresh_1000_positions_ms']['p99']:.2f} ms; {market['ticks_per_s_1000_portfolios']:,.0f} "
             "ticks/s across 1,000 portfolios")

        # Latency on a stack of its own: the embedded broker's cost per request grows with the
        # batches its topics hold (twice the CPU for the same rate after a 300k-message drain),
        # so a sweep after the drains would measure the broker's fill level.
        _say(f"\n== latency: a fresh stack and 1 worker, open-loop producer, {seconds:.0f}s per rate; "
             "producer and consumer are threads of this process")
        bs = harness.start_stack(base, tmp / "stack-latency", progress=_say, warm_s=warm_s)
        stacks.append(bs)
        warm = min(n, 5000)
        workload.preload(bs.settings, preload_msgs, stop=warm, progress=_say)
        _, workers = broker_runs.drain_throughput(bs, group, 1, warm, progress=_say, keep_running=True)
        start = n
        if warm_s:
            _say(f"  warm-up: {warm_rate:,}/s for {warm_s:.0f}s, not counted")
            res["latency_warmup"], start = broker_runs.latency_at_rates(
                bs.settings, msgs, start, [warm_rate], warm_s, progress=_say, roles=bs.roles(workers),
                service_linger_ms=args.service_linger_ms)
        res["latency_ms"], _ = broker_runs.latency_at_rates(bs.settings, msgs, start, rates, seconds, progress=_say,
                                                   roles=bs.roles(workers), service_linger_ms=args.service_linger_ms)
        for proc in workers:
            group.stop(proc)
        bs.stack.stop()
        stacks.remove(bs)

        by_workers: dict[str, dict] = {}
        for idx, w in enumerate(worker_counts):
            _say(f"\n== throughput with {w} worker(s): fresh stack")
            bs = harness.start_stack(base, tmp / f"stack-{idx}", progress=_say, warm_s=warm_s)
            stacks.append(bs)
            # The timed drain starts once the group is steady: a warm-up set first, then n more.
            workload.preload(bs.settings, msgs, stop=drain_warm, progress=_say)
            first = idx == 0
            drain, workers = broker_runs.drain_throughput(
                bs, group, w, n, progress=_say, keep_running=first, warm=drain_warm,
                feed=lambda: workload.preload(bs.settings, msgs, start=drain_warm, stop=drain_warm + n, progress=_say))
            by_workers[str(w)] = drain.as_dict()
            _say(f"  {w} worker(s): {drain.tps:,.0f} transactions/s over {drain.seconds:.1f}s, "
                 f"worker CPU {drain.cpu_us_per_txn['workers']:.1f} µs/txn, peak RSS {drain.worker_peak_rss_mb} MB")
            if first:
                for proc in workers:
                    group.stop(proc)
                _say("\n== baselines on the same topic")
                faust = broker_runs.faust_per_event_drain(bs, group, n, progress=_say)
                res["faust_per_event"] = faust
                _say(f"  Faust per-event agent (no work): {faust['tps']:,.0f}/s")
                raw = broker_runs.raw_getmany_drain(bs.settings, n)
                res["raw_consume"] = raw
                _say(f"  aiokafka getmany(max_records=10000): {raw['tps']:,.0f}/s over {raw['events']:,} records")
                _say("\n== per-stage profile (in process, batches of 5000, real broker and Valkey)")
                res["stage_profile"] = engine_runs.stage_profile(bs.settings, preload_msgs, progress=_say)
            bs.stack.stop()
            stacks.remove(bs)
        res["throughput_tps_by_workers"] = {k: v["tps"] for k, v in by_workers.items()}
        res["throughput_runs"] = by_workers
        res["throughput_tps"] = max(res["throughput_tps_by_workers"].values())
        first_run = by_workers[str(worker_counts[0])]
        res["cpu_us_per_txn"] = first_run["cpu_us_per_txn"]
        res["cpu_us_per_txn_workers"] = worker_counts[0]
        res["faust_per_event_tps"] = res["faust_per_event"]["tps"]
        res["raw_consume_tps"] = res["raw_consume"]["tps"]
        res["stage_us_per_txn"] = res["stage_profile"]["us_per_txn"]
        res["peak_rss_mb"] = {
            "worker": max(r for run in by_workers.values() for r in run["worker_peak_rss_mb"]),
            "engine_at_cards": mem["peak_rss_mb"],
            "cards": cards,
        }
        res["ratios"] = {
            "engine_vs_faust_per_event": round(res["throughput_tps"] / max(res["faust_per_event_tps"], 1e-9), 2),
            "engine_vs_raw_getmany": round(res["throughput_tps"] / max(res["raw_consume_tps"], 1e-9), 3),
            "offline_vs_engine": round(res["offline_replay_tps"] / max(res["throughput_tps"], 1e-9), 2),
        }
        res["targets"] = _targets(res)
        res["notes"] = [
            f"{m['cores']} cores shared by the broker, Valkey, the chDB sink, the worker(s) and this process "
            "(its producer and consumer threads): figures are noisy; re-run before reading small differences.",
            "Latency = decision arrival at this process's consumer - time.time() at produce, open loop.",
            "Engine-only latency = outputs encoded - arrival, in process with no broker: the engine's share "
            "of the end-to-end figure, which adds two broker hops and the producers' lingers.",
            "CPU per transaction is sampled from the first to the last decision: start-up excluded.",
        ]
        res["elapsed_s"] = round(time.monotonic() - t_all, 1)
        finished = True
        return res
    finally:
        group.stop_all()
        for bs in stacks:
            bs.stack.stop()
        if finished:
            shutil.rmtree(tmp, ignore_errors=True)
        else:  # the error names logs in here
            _say(f"bench: stopped early; its stacks' data and logs are kept in {tmp} (delete it when done)")


def _targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    at10k = res.get("latency_ms", {}).get("10000")
    rows = [
        ("end-to-end throughput", f">= {TARGETS['e2e_tps']:,.0f} tx/s", res["throughput_tps"],
         res["throughput_tps"] >= TARGETS["e2e_tps"]),
        ("vs per-event Faust", f">= {TARGETS['faust_ratio']:g}x", res["ratios"]["engine_vs_faust_per_event"],
         res["ratios"]["engine_vs_faust_per_event"] >= TARGETS["faust_ratio"]),
        ("p50 at 10k/s", f"<= {TARGETS['p50_ms_at_10k']:g} ms", at10k.get("p50") if at10k else None,
         None if not at10k or "p50" not in at10k else at10k["p50"] <= TARGETS["p50_ms_at_10k"] and not at10k["missing"]),
        ("p99 at 10k/s", f"<= {TARGETS['p99_ms_at_10k']:g} ms", at10k.get("p99") if at10k else None,
         None if not at10k or "p99" not in at10k else at10k["p99"] <= TARGETS["p99_ms_at_10k"] and not at10k["missing"]),
        ("offline replay", f">= {TARGETS['offline_tps']:,.0f} tx/s", res["offline_replay_tps"],
         res["offline_replay_tps"] >= TARGETS["offline_tps"]),
        (f"peak RSS at {res['memory']['cards']:,} cards", f"<= {TARGETS['rss_mb_at_1m_cards']:,.0f} MB",
         res["memory"]["peak_rss_mb"], res["memory"]["peak_rss_mb"] <= TARGETS["rss_mb_at_1m_cards"]),
    ]
    return [{"name": a, "target": b, "value": c, "met": d} for a, b, c, d in rows]


def render(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [f"riskstream bench ({'quick' if res['quick'] else 'full'}) - {m['cores']} cores, {m['cpu_model']}, "
             f"{m['ram_gb']} GB, Python {m['python']}; broker {res.get('broker', 'tansu')}, "
             f"{res['config'].get('processing_guarantee', 'at_least_once').replace('_', ' ')}; "
             f"{res['elapsed_s']:.0f}s", ""]
    lines.append(f"Throughput (drain of {res['config']['transactions']:,} preloaded transactions, all detectors and sinks on)")
    for w, run in res["throughput_runs"].items():
        cpu = run["cpu_us_per_txn"]
        lines.append(f"  {w} worker(s): {run['tps']:>9,.0f} tx/s   CPU µs/txn: worker(s) {cpu['workers']:.1f}, "
                     f"broker {cpu.get('broker', 0):.1f}, valkey {cpu.get('valkey', 0):.1f}, sink {cpu.get('sink', 0):.1f}, "
                     f"bench {cpu.get('bench', 0):.1f}   worker peak RSS {run['worker_peak_rss_mb']} MB"
                     + ("" if run["complete"] else f"   INCOMPLETE {run['decided']:,}/{run['transactions']:,}"))
    lines.append(f"  baselines on the same topic: Faust per-event agent {res['faust_per_event_tps']:,.0f}/s, "
                 f"aiokafka getmany {res['raw_consume_tps']:,.0f}/s")
    r = res["ratios"]
    lines.append(f"  engine/Faust per-event {r['engine_vs_faust_per_event']:.1f}x, engine/raw getmany "
                 f"{r['engine_vs_raw_getmany']:.3f}, offline/engine {r['offline_vs_engine']:.1f}x")
    lines.append("")
    lines.append("Latency (open loop; producer+consumer threads share the cores with the stack)")
    lines.append(f"  {'offered/s':>10} {'achieved':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}  "
                 f"{'decided':>15}  broker round trip p50/p99 ms")
    for rate, st in res["latency_ms"].items():
        rt = st.get("broker_round_trip_ms", {})
        lines.append(f"  {int(rate):>10,} {st['offered_tps']:>9,.0f} {st.get('p50', float('nan')):>8.1f} "
                     f"{st.get('p95', float('nan')):>8.1f} {st.get('p99', float('nan')):>8.1f} "
                     f"{st.get('max', float('nan')):>8.1f}  {st['decided']:>7,}/{st['sent']:<7,}  "
                     f"{rt.get('p50', float('nan')):.1f}/{rt.get('p99', float('nan')):.1f}")
    lines.append("  where the time went, p50/p99 ms: to_scoring = broker hop + worker fetch, linger, queue and "
                 "decode; scoring = the engine on the batch; to_reader = producer linger + broker hop")
    for rate, st in res["latency_ms"].items():
        if "stages_ms" in st:
            lines.append(f"  {int(rate):>10,}  " + ", ".join(
                f"{k} {v['p50']:.1f}/{v['p99']:.1f}" for k, v in st["stages_ms"].items()))
    lines.append("")
    lines.append("Engine-only latency (in process, no broker: open-loop arrivals -> decode, score, encode)")
    lines.append(f"  {'linger':>7} {'offered/s':>10} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}  "
                 f"{'batch':>6}  batch ms p50/p99/max  busy")
    for linger, by_rate in res.get("engine_latency_ms", {}).items():
        for rate, st in by_rate.items():
            bm = st["batch_ms"]
            lines.append(f"  {st['linger_ms']:>4} ms {int(rate):>10,} {st['p50']:>8.1f} {st['p95']:>8.1f} "
                         f"{st['p99']:>8.1f} {st['max']:>8.1f}  {st['mean_batch']:>6,.0f}  "
                         f"{bm['p50']:.1f}/{bm['p99']:.1f}/{bm['max']:.1f}  {st['busy_share']:.0%}")
    lines.append("")
    off = res["offline_replay"]
    direct = off.get("engine_only", off)
    lines.append(f"Offline replay: {off['tps']:,.0f} tx/s to the last row in ClickHouse"
                 + (f", {off['tps_with_close']:,.0f} with closing chDB" if "tps_with_close" in off else "")
                 + f" ({off['path']})"
                 + ("; stage µs/txn " + ", ".join(f"{k} {v:.1f}" for k, v in off["profile_us_per_txn"].items())
                    if "profile_us_per_txn" in off else ""))
    lines.append(f"  engine alone: {direct['tps']:,.0f} tx/s ({direct['path']}, batches of {direct['batch_size']}); "
                 "µs/txn " + ", ".join(f"{k} {v:.1f}" for k, v in direct["us_per_txn"].items()))
    mem = res["memory"]
    lines.append(f"Memory at {mem['cards']:,} cards: {mem['state_bytes_per_card']:,.0f} feature-state bytes/card "
                 f"({mem['feature_state_bytes'] / 2**20:,.0f} MB over {mem['tracked_entities']}), model ring "
                 f"{mem['model_state_bytes'] / 2**20:,.0f} MB, peak RSS {mem['peak_rss_mb']:,.0f} MB")
    market = res.get("market_risk")
    if market:
        refresh = market["refresh_1000_positions_ms"]
        lines.append(f"Market risk (in process): a 1,000-position portfolio refreshed after a tick, p50 "
                     f"{refresh['p50']:.2f} / p99 {refresh['p99']:.2f} ms; "
                     f"{market['ticks_per_s_1000_portfolios']:,.0f} ticks/s across 1,000 portfolios")
    lines.append("")
    sp = res["stage_profile"]
    lines.append(f"Per-stage profile (µs per transaction, batches of {sp['batch_size']}; "
                 f"implies {sp['implied_tps']:,.0f} tx/s on one core)")
    total = sp["us_per_txn"]["total"]
    for k, v in sp["us_per_txn"].items():
        if k != "total":
            lines.append(f"  {k:<16} {v:>8.2f}  {100 * v / total:5.1f}%  {'#' * int(round(40 * v / total))}")
    lines.append(f"  {'total':<16} {total:>8.2f}")
    lines.append("")
    lines.append("Targets")
    for t in res["targets"]:
        mark = "n/a " if t["met"] is None else ("met " if t["met"] else "MISSED")
        val = t["value"]
        val = "-" if val is None else f"{val:,.1f}"
        lines.append(f"  [{mark:<6}] {t['name']:<28} {t['target']:<16} measured {val}")
    lines.append("")
    lines.extend(f"Note: {note}" for note in res["notes"])
    return "\n".join(lines)


def _cmd_bench(args: argparse.Namespace) -> int:
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        res = run_bench(args)
    except _Terminated:
        _say("riskstream bench: terminated; processes stopped")
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.json:
        _say("\n" + render(res))
        print(orjson.dumps(res, option=orjson.OPT_SERIALIZE_NUMPY).decode(), flush=True)
    else:
        print("\n" + render(res), flush=True)
    return 0


def register(sub) -> None:
    p = sub.add_parser("bench", help="Measure throughput, latency, memory and per-stage costs on the embedded stack.")
    p.add_argument("--json", action="store_true", help="Print one JSON object on stdout (the report goes to stderr).")
    p.add_argument("--transactions", type=int, default=0, help="Transactions to preload and drain (default 200,000).")
    p.add_argument("--rates", type=_ints, default=None, help="Offered rates for the latency sweep (default 2000,5000,10000,20000).")
    p.add_argument("--workers", type=_ints, default=None, help="Worker counts, a fresh stack each (default 1,2).")
    p.add_argument("--latency-seconds", type=float, default=0.0, help="Seconds per offered rate (default 10).")
    p.add_argument("--cards", type=int, default=0, help="Distinct cards for the memory figure (default 1,000,000).")
    p.add_argument("--quick", action="store_true", help="Small sizes everywhere (smoke check, tests).")
    add_broker_option(p, "the embedded broker every stack of the run uses")
    p.add_argument("--guarantee", choices=("at_least_once", "exactly_once"),
                   help="the workers' processing guarantee (default: RISKSTREAM_PROCESSING_GUARANTEE, else "
                        "at_least_once); exactly once is what read-committed consumers see")
    p.add_argument("--warmup-seconds", type=float, default=None,
                   help="before each measurement on Kafka, this long of broker traffic and of the latency "
                        "sweep's rate (up to 10,000/s) goes uncounted: the JVM's JIT (default 20, quick 5; "
                        "0 on Tansu)")
    p.add_argument("--service-linger-ms", type=float, default=5.0,
                   help="how long the latency sweep's producer, standing for the transaction services, "
                        "gathers transactions into one request (default 5: on Tansu fewer, larger requests "
                        "are fastest; on Kafka 1 halves the broker hop when the machine has a core to spare)")
    p.set_defaults(run=_cmd_bench)
