"""`riskstream bench --quick --json` on the real embedded stack: the report's shape and its
internal consistency. No timing thresholds: on a shared machine they would only be flaky."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    # A subprocess, as a user runs it: its stdout must hold exactly one JSON object.
    env = dict(os.environ, RISKSTREAM_DATA_DIR=str(tmp_path_factory.mktemp("bench")))
    out = subprocess.run([sys.executable, "-m", "riskstream", "bench", "--quick", "--json"], env=env,
                         capture_output=True, timeout=240)
    assert out.returncode == 0, out.stderr.decode(errors="replace")[-4000:]
    return orjson.loads(out.stdout)


def test_keys_present(report):
    for key in ("throughput_tps", "throughput_tps_by_workers", "cpu_us_per_txn", "latency_ms", "faust_per_event_tps",
                "raw_consume_tps", "offline_replay_tps", "peak_rss_mb", "state_bytes_per_card", "stage_us_per_txn",
                "machine", "targets", "ratios"):
        assert key in report, key
    assert {"cores", "ram_gb", "cpu_model", "python"} <= set(report["machine"])


def test_throughput_numbers_consistent(report):
    by_workers = report["throughput_tps_by_workers"]
    assert by_workers and all(v > 0 for v in by_workers.values())
    assert report["throughput_tps"] == max(by_workers.values())
    for run in report["throughput_runs"].values():
        assert run["complete"] and run["decided"] == run["transactions"]
        assert all(r > 0 for r in run["worker_peak_rss_mb"])
    assert report["cpu_us_per_txn"]["workers"] > 0
    assert report["faust_per_event_tps"] > 0 and report["raw_consume_tps"] > 0
    assert report["ratios"]["engine_vs_faust_per_event"] == pytest.approx(
        report["throughput_tps"] / report["faust_per_event_tps"], rel=0.01)


def test_latency_per_rate(report):
    assert set(report["latency_ms"]) == {str(r) for r in report["config"]["rates"]}
    for st in report["latency_ms"].values():
        assert st["decided"] == st["sent"] > 0
        assert 0 < st["p50"] <= st["p95"] <= st["p99"] <= st["max"]
        # where the CPU went while the rate was offered: every part of the stack is sampled
        assert set(st["cpu_percent_of_a_core"]) >= {"workers", "broker", "sink", "bench"}
        assert st["cpu_percent_of_a_core"]["workers"] > 0
        # the same latency cut where it was spent: the broker hops and the engine's own part
        assert set(st["stages_ms"]) == {"to_scoring", "scoring", "to_reader"}
        for part in st["stages_ms"].values():
            assert 0 <= part["p50"] <= part["p99"] <= st["max"]


def test_engine_only_latency_per_linger_and_rate(report):
    rates = {str(r) for r in report["config"]["rates"]}
    lingers = report["engine_latency_ms"]
    assert "linger_0" in lingers and len(lingers) >= 1
    for by_rate in lingers.values():
        assert set(by_rate) == rates
        for st in by_rate.values():
            assert 0 < st["p50"] <= st["p95"] <= st["p99"] <= st["max"]
            assert st["mean_batch"] == pytest.approx(st["transactions"] / st["batches"], abs=0.05)
            assert 0 < st["busy_share"] <= 1.0 and st["batch_ms"]["p50"] <= st["batch_ms"]["max"]


def test_latency_stages_split_each_decision_at_its_two_stamps():
    from riskstream.bench.broker_runs import decided_at_of, latency_stages

    value = (b'{"event_id":"t1","stream":"transactions","entity_id":"c","event_time":1.5,'
             b'"decided_at":1700000000.123,"score":0.1}')
    assert decided_at_of(value) == 1700000000.123
    assert decided_at_of(b'{"decided_at":5.0}') == 5.0  # last field: the JSON parse
    # sent 0 s -> scoring from 10 ms -> produced at 12 ms -> read at 20 ms; twice as long for the second
    stages = latency_stages([100.0, 200.0], [(100.010, 100.012), (200.020, 200.024)], [100.020, 200.040])
    assert stages["to_scoring"]["p50"] == pytest.approx(15.0)
    assert stages["scoring"]["p50"] == pytest.approx(3.0)
    assert stages["to_reader"]["p50"] == pytest.approx(12.0)
    assert stages["to_reader"]["p99"] == pytest.approx(15.92, abs=0.01)


def test_ids_are_read_without_a_json_parse_when_they_come_first():
    from riskstream.bench.broker_runs import leading_id

    assert leading_id(b'{"transaction_id":"tx-1","amount":2}', "transaction_id") == b"tx-1"
    # not first: the JSON parse, same answer
    assert leading_id(b'{"amount":2,"transaction_id":"tx-2"}', "transaction_id") == b"tx-2"
    assert leading_id(b'{"event_id":"e-9","score":0.5}', "event_id") == b"e-9"


def test_in_process_figures(report):
    assert report["offline_replay_tps"] > 0
    market = report["market_risk"]
    assert market["refresh_1000_positions_ms"]["p99"] > 0 and market["ticks_per_s_1000_portfolios"] > 0
    # The simulator's labels went in with the transactions, so the model had a say for some of them.
    for processes, run in report["offline_replay"]["runs"].items():
        assert run["labels"] > 0
        # closing the embedded chDB comes after the last row is in, and is reported apart
        assert run["profile_us_per_txn"]["clickhouse_close"] >= 0
        assert 0 < run["tps_with_close"] <= run["tps"]
        mix = run["decision_mix"]
        assert sum(mix["share"].values()) == pytest.approx(1.0, abs=1e-3) and mix["share"]["approve"] > 0.5
        # In the quick run's 20k transactions (under a day) the model is still warming up or
        # proving itself on a week of settled labels (docs/model-quality.md) at the end.
        assert 0 <= mix["model_ready_share"] <= 1
    assert report["offline_replay"]["engine_only"]["labels"] > 0
    assert report["state_bytes_per_card"] > 0
    assert report["memory"]["tracked_entities"]["card"] == report["memory"]["cards"]
    assert report["peak_rss_mb"]["worker"] > 0 and report["peak_rss_mb"]["engine_at_cards"] > 0
    stages = report["stage_us_per_txn"]
    assert {"decode", "features", "rules", "models_score", "decide", "encode_and_produce", "flush"} <= set(stages)
    assert all(v >= 0 for v in stages.values())
    assert stages["total"] == pytest.approx(sum(v for k, v in stages.items() if k != "total"), abs=0.05)
    assert all(t["met"] in (True, False, None) for t in report["targets"])


def test_simulated_traffic_starts_on_a_monday_so_runs_of_a_week_compare():
    from datetime import datetime, timezone

    from riskstream.bench.workload import simulation_start_ms
    from riskstream.schemas.events import DAY_MS

    def ms(text: str) -> int:
        return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp() * 1000)

    days = 14
    # a Wednesday noon and the Sunday after it: the same Monday start, 14 days ending in the past
    wednesday, sunday = ms("2026-11-18T12:00:00"), ms("2026-11-22T23:30:00")
    start = simulation_start_ms(days, wednesday)
    assert start == simulation_start_ms(days, sunday) == ms("2026-11-02T00:00:00")
    assert datetime.fromtimestamp(start / 1000, timezone.utc).weekday() == 0
    # the last simulated day ends at least an hour before the run, at most a week and an hour
    for now in (wednesday, sunday, ms("2026-11-23T00:59:00"), ms("2026-11-23T01:00:00")):
        end = simulation_start_ms(days, now) + days * DAY_MS
        assert now - 7 * DAY_MS - 3_600_000 <= end <= now - 3_600_000
    # an hour into the next week's Monday, the next week's start
    assert simulation_start_ms(days, ms("2026-11-23T01:00:00")) == ms("2026-11-09T00:00:00")
