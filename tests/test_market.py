"""Market risk on the streams: kernel parity, streaming VaR equal to a batch recomputation of
the same windows, limits that breach, control and clear, and state across a restart."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest
from pydantic import SecretStr

from riskstream.detectors import portfolio_kernels as pk
from riskstream.schemas.events import DAY_MS
from riskstream.settings import ConfigError, Settings
from riskstream.sinks.publisher import RecordingPublisher
from riskstream.streams.driver import Driver

T0 = 1_700_000_000_000 - 1_700_000_000_000 % DAY_MS  # a UTC midnight
INSTRUMENTS = {"AAA": 100.0, "BBB": 40.0, "CCC": 2500.0}


def _settings(tmp_path, **kw) -> Settings:
    return Settings(data_dir=tmp_path / "rs", pan_key=SecretStr("k" * 32), risk_refresh_interval_s=0, **kw)


def _ticks(days: int, seed: int = 2) -> list[dict]:
    """Four ticks a day per instrument; BBB does not trade at weekends."""
    rng = np.random.default_rng(seed)
    price = dict(INSTRUMENTS)
    out = []
    for d in range(days):
        for h in (1, 7, 13, 19):
            for name in INSTRUMENTS:
                if name == "BBB" and (d + 3) % 7 >= 5:
                    continue
                price[name] *= math.exp(rng.normal(0, 0.01 if name != "CCC" else 0.03))
                out.append({"instrument": name, "event_time": T0 + d * DAY_MS + h * 3_600_000,
                            "price": round(price[name], 6)})
    return out


def test_the_many_portfolio_kernel_matches_one_portfolio_at_a_time():
    rng = np.random.default_rng(7)
    n_instruments, h = 30, 250
    returns, scale = rng.normal(0, 0.02, (n_instruments, h)), rng.uniform(0.5, 2, (n_instruments, h))
    growth = pk.scenario_growth(returns, scale)
    price = rng.uniform(10, 100, n_instruments)
    price[3] = np.nan  # not priced yet: left out
    reference = price * rng.uniform(0.97, 1.03, n_instruments)
    sizes = rng.integers(1, 12, 40)
    offsets = np.r_[0, np.cumsum(sizes)]
    slots = np.concatenate([rng.choice(n_instruments, k, replace=False) for k in sizes])
    qty = rng.normal(0, 1000, len(slots))
    out = np.empty((40, 9))
    pk.portfolio_figures(offsets, slots, qty, price, reference, growth, out)
    for k in range(40):
        s_, q = slots[offsets[k]:offsets[k + 1]], qty[offsets[k]:offsets[k + 1]]
        priced = ~np.isnan(price[s_])
        s_, q = s_[priced], q[priced]
        values = q * price[s_]
        pnl = np.empty(h)
        pk.scenario_pnl_reference(values, s_, returns, scale, pnl)
        want = [values.sum(), (q * reference[s_]).sum(), np.abs(values).sum(),
                np.abs(values).max() if len(values) else 0.0,
                *pk.var_es_of_losses_reference(-pnl, 0.95), *pk.var_es_of_losses_reference(-pnl, 0.99), priced.sum()]
        np.testing.assert_allclose(out[k], want, rtol=1e-9, atol=1e-6)  # expm1 against exp - 1


def _batch_var_es(ticks: list[dict], holdings: dict[str, float], history: int, lam: float, c: float):
    """The same windows from scratch: daily closes, returns of closed days, EWMA scales."""
    today = max(t["event_time"] for t in ticks) // DAY_MS
    values, returns, scales = [], [], []
    for name, qty in holdings.items():
        mine = [t for t in ticks if t["instrument"] == name]
        closes: dict[int, float] = {}
        for t in mine:
            closes[t["event_time"] // DAY_MS] = t["price"]  # the last tick of each day
        last_day = max(closes)
        days = sorted(closes)
        r_by_day, sigma_by_day, var = {}, {}, math.nan
        for prev, day in zip(days, days[1:]):
            if day >= last_day:  # a day closes at the first tick of a later day
                break
            r = math.log(closes[day] / closes[prev])
            sigma_by_day[day] = math.sqrt(var) if var > 0 else math.nan
            r_by_day[day] = r
            var = r * r if math.isnan(var) else lam * var + (1 - lam) * r * r
        sigma_now = math.sqrt(var)
        window = [today - 1 - s for s in range(history)]
        returns.append([r_by_day.get(d, 0.0) for d in window])
        scales.append([sigma_now / sigma_by_day[d] if d in r_by_day and sigma_by_day[d] > 0 else 1.0
                       for d in window])
        values.append(qty * mine[-1]["price"])
    pnl = sum(v * (np.exp(np.asarray(r) * np.asarray(s)) - 1) for v, r, s in zip(values, returns, scales))
    losses = -pnl
    var = np.quantile(losses, c)
    return var, losses[losses >= var].mean(), sum(values)


def test_streaming_var_equals_a_batch_recomputation_of_the_same_windows(tmp_path):
    settings = _settings(tmp_path, market_history_days=60)
    driver = Driver(settings, with_models=False)
    holdings = {"AAA": 1000.0, "BBB": -2500.0, "CCC": 30.0}
    driver.process("positions", [orjson.dumps({"portfolio_id": "PF1", "instrument": k, "event_time": T0, "quantity": q})
                                 for k, q in holdings.items()])
    ticks = _ticks(90)
    for start in range(0, len(ticks), 37):  # batches of odd sizes, as a topic delivers them
        driver.process("market", [orjson.dumps(t) for t in ticks[start:start + 37]])
    fig = driver.market.figures[("portfolio", "PF1")]
    for c, var_key, es_key in ((0.99, "var_99", "es_99"), (0.95, "var_95", "es_95")):
        var, es, value = _batch_var_es(ticks, holdings, 60, 0.94, c)
        assert fig[var_key] == pytest.approx(var, rel=1e-9) and fig[es_key] == pytest.approx(es, rel=1e-9)
    assert fig["value"] == pytest.approx(value)
    assert fig["gross"] > abs(fig["net"]) and 0 < fig["concentration"] <= 1


def _gjr_batch_var_es(ticks: list[dict], holdings: dict[str, float], history: int, min_fit: int, refit: int, c: float):
    """GJR-filtered windows from scratch: each instrument's returns of closed days, its last
    fit (due at ``min_fit`` returns, then every ``refit``) on the returns up to it, and the
    GJR variance recursion from their sample variance through every return since."""
    from riskstream.detectors.var_kernels import gjr_variance_reference
    from riskstream.streams.instrument_book import fit_gjr

    today = max(t["event_time"] for t in ticks) // DAY_MS
    values, growth = [], []
    for name, qty in holdings.items():
        closes = {t["event_time"] // DAY_MS: t["price"] for t in ticks if t["instrument"] == name}
        days = sorted(closes)[:-1]  # the last day is still open
        r = np.array([math.log(closes[d] / closes[p]) for p, d in zip(days, days[1:])])
        days = days[1:]
        k = min_fit + (len(r) - min_fit) // refit * refit
        p = fit_gjr(r[:k])
        variance = np.empty(len(r) + 1)
        gjr_variance_reference(np.append(r - p.mu, 0.0), p.omega, p.alpha, p.gamma, p.beta, float(np.var(r[:k])),
                               variance)
        sigma = dict(zip(days, np.sqrt(variance[:-1])))
        r_by_day = dict(zip(days, r))
        sigma_now = math.sqrt(variance[-1])
        window = [today - 1 - s for s in range(history)]
        growth.append([math.exp(p.mu + (r_by_day[d] - p.mu) * sigma_now / sigma[d]) - 1 if d in r_by_day else 0.0
                       for d in window])
        values.append(qty * [t for t in ticks if t["instrument"] == name][-1]["price"])
    losses = -sum(v * np.asarray(g) for v, g in zip(values, growth))
    var = np.quantile(losses, c)
    return var, losses[losses >= var].mean()


def test_streaming_gjr_filtered_var_equals_a_batch_recomputation_with_the_same_fits(tmp_path):
    settings = _settings(tmp_path, market_history_days=60, market_volatility="gjr", market_fit_min_returns=100,
                         market_refit_days=30, market_refit_background=False)
    driver = Driver(settings, with_models=False)
    holdings = {"AAA": 1000.0, "BBB": -2500.0, "CCC": 30.0}
    driver.process("positions", [orjson.dumps({"portfolio_id": "PF1", "instrument": k, "event_time": T0, "quantity": q})
                                 for k, q in holdings.items()])
    ticks = _ticks(200)
    for start in range(0, len(ticks), 53):
        driver.process("market", [orjson.dumps(t) for t in ticks[start:start + 53]])
    book = driver.market.book
    assert book.gjr[[book.slots[n] for n in holdings]].all() and book.fits.fits_applied == 4 + 2 + 4  # AAA and CCC trade daily, BBB on weekdays
    fig = driver.market.figures[("portfolio", "PF1")]
    for c, var_key, es_key in ((0.99, "var_99", "es_99"), (0.95, "var_95", "es_95")):
        var, es = _gjr_batch_var_es(ticks, holdings, 60, 100, 30, c)
        assert fig[var_key] == pytest.approx(var, rel=1e-9) and fig[es_key] == pytest.approx(es, rel=1e-9)
    out = RecordingPublisher()
    driver.run("positions", [orjson.dumps({"portfolio_id": "PF1", "instrument": "AAA",
                                           "event_time": ticks[-1]["event_time"], "quantity": 900.0})], out)
    assert [orjson.loads(r)["model"] for r in out.rows("portfolio_risk")] == ["fhs-gjr"]


def test_refits_in_the_helper_process_come_into_force_at_a_later_batch_and_survive_a_restart(tmp_path):
    settings = _settings(tmp_path, market_history_days=60, market_fit_min_returns=100, market_refit_days=30)
    driver = Driver(settings, with_models=False)
    ticks = [t for t in _ticks(110) if t["instrument"] == "CCC"]
    driver.process("market", [orjson.dumps(t) for t in ticks[:-4]])
    book = driver.market.book
    assert not book.gjr.any()  # asked for, not waited on
    assert book.fits.wait() == 1
    restarted = Driver(settings, with_models=False)
    restarted.restore(driver.checkpoint())  # taken while the fit was in flight: asked again
    driver.process("market", [orjson.dumps(t) for t in ticks[-4:]])
    assert book.gjr[book.slots["CCC"]] and book.fits.fits_applied == 1
    restarted.process("market", [orjson.dumps(ticks[-1])])
    assert restarted.market.book.fits.wait() == 1
    restarted.process("market", [orjson.dumps(ticks[-1])])
    assert restarted.market.book.gjr[restarted.market.book.slots["CCC"]]
    for d in (driver, restarted):
        d.market.close()


LIMITS = """
version: test
limits:
  - {id: pf-gross, scope: portfolio, entity: PF1, metric: gross, limit: 200000, action: block_new_risk}
  - {id: pf-var, scope: portfolio, entity: "*", metric: var_99, limit: 1e9, action: cap_notional}
"""


def test_a_breach_alerts_controls_and_clears_when_the_position_is_reduced(tmp_path):
    limits = tmp_path / "limits.yaml"
    limits.write_text(LIMITS)
    driver = Driver(_settings(tmp_path, limits_file=str(limits)), with_models=False)
    rec = RecordingPublisher()
    rec.publishes_topics = True  # as the worker's publisher: the limits topic too

    def position(qty: float, t: int) -> None:
        driver.run("positions", [orjson.dumps({"portfolio_id": "PF1", "instrument": "AAA", "event_time": t,
                                               "quantity": qty, "price": 100.0, "desk": "equities"})], rec)

    position(1000, T0)  # 100k of 200k: under the 80% near line
    position(1700, T0 + 60_000)  # 170k: near
    position(2500, T0 + 120_000)  # 250k: breach
    position(500, T0 + 180_000)  # 50k: cleared
    states = [orjson.loads(r)["state"] for r in rec.rows("limit_utilisation")]
    assert states == ["near", "breach", "cleared"]
    kinds = [orjson.loads(r)["kind"] for r in rec.rows("alerts")]
    assert kinds == ["limit_near", "limit_breach"]
    controls = [c for name, *args in rec.calls if name == "limits" for c in args[0]]
    assert [(c["entity_type"], c["entity_id"], c["action"]) for c in controls] == [
        ("portfolio", "PF1", "block_new_risk"), ("portfolio", "PF1", "clear")]
    sent = [orjson.loads(v) for name, *args in rec.calls if name == "send" and args[0] == "limits" for _, v in args[1]]
    assert [m["action"] for m in sent] == ["block_new_risk", "clear"]
    rows = [orjson.loads(r) for r in rec.rows("portfolio_risk")]
    assert rows[-1]["gross"] == 50_000 and rows[-1]["desk"] == "equities" and rows[-1]["var_99"] is None


def test_a_figure_wavering_at_the_near_line_warns_once_until_it_falls_well_below(tmp_path):
    limits = tmp_path / "limits.yaml"
    limits.write_text(LIMITS)
    driver = Driver(_settings(tmp_path, limits_file=str(limits)), with_models=False)
    rec = RecordingPublisher()
    for k, qty in enumerate((1620, 1580, 1620, 1590, 1400, 1620)):  # 81%, 79%, 81%, 79.5%, 70%, 81%
        driver.run("positions", [orjson.dumps({"portfolio_id": "PF1", "instrument": "AAA", "event_time": T0 + k,
                                               "quantity": qty, "price": 100.0})], rec)
    assert [orjson.loads(r)["kind"] for r in rec.rows("alerts")] == ["limit_near", "limit_near"]
    assert [orjson.loads(r)["state"] for r in rec.rows("limit_utilisation")] == ["near", "ok", "near"]


def test_a_limits_file_with_errors_is_refused_with_its_lines(tmp_path):
    bad = tmp_path / "limits.yaml"
    bad.write_text("limits:\n  - {id: a, scope: book, entity: x, metric: gross, limit: 1}\n"
                   "  - {id: b, scope: instrument, entity: x, metric: var_99, limit: -5}\n")
    with pytest.raises(ConfigError) as exc:
        Driver(_settings(tmp_path, limits_file=str(bad)), with_models=False)
    message = str(exc.value)
    assert f"{bad}:2: limit 'a': unknown scope 'book'" in message
    assert f"{bad}:3: limit 'b': metric 'var_99' has no meaning for a instrument" in message
    assert f"{bad}:3: limit 'b': limit must be above 0" in message


def test_market_state_survives_a_restart(tmp_path):
    settings = _settings(tmp_path, market_history_days=40)
    ticks = _ticks(45)
    first = Driver(settings, with_models=False)
    first.process("positions", [orjson.dumps({"portfolio_id": "PF1", "instrument": "AAA", "event_time": T0,
                                              "quantity": 10.0})])
    first.process("market", [orjson.dumps(t) for t in ticks[:-3]])
    second = Driver(settings, with_models=False)
    second.restore(first.checkpoint())
    for d in (first, second):
        d.process("market", [orjson.dumps(t) for t in ticks[-3:]])
    assert second.market.figures[("portfolio", "PF1")] == first.market.figures[("portfolio", "PF1")]


@pytest.mark.integration
def test_a_cleared_control_leaves_redis(stack):
    from riskstream.sinks.kafka import OutputPublisher, connect_redis

    redis = connect_redis(stack)
    publisher = OutputPublisher(stack, redis_client=redis)
    control = {"entity_type": "portfolio", "entity_id": "PF9", "action": "block_new_risk", "max_amount": 0.0,
               "valid_until": 4_000_000_000.0, "reason": "pf-gross", "event_id": "e1", "issued_at": 1.0,
               "rules_version": "test"}
    publisher.limits([control])
    assert redis.hget("rs:limit:portfolio:PF9", "action") == b"block_new_risk"
    publisher.limits([{**control, "action": "clear"}])
    assert not redis.exists("rs:limit:portfolio:PF9")


def test_market_bench_measures_both_figures():
    from riskstream.bench.market_bench import run

    res = run(days=40, say=lambda _: None)
    assert res["refresh_1000_positions_ms"]["p99"] >= res["refresh_1000_positions_ms"]["p50"] > 0
    assert res["ticks_per_s_1000_portfolios"] > 0


def test_a_volatility_regime_change_raises_an_alert(tmp_path):
    driver = Driver(_settings(tmp_path), with_models=False)
    rng = np.random.default_rng(5)
    price, alerts = 100.0, []
    for day in range(400):
        sigma = 0.005 if day < 250 else 0.03  # calm, then six times the volatility
        price *= math.exp(rng.normal(0, sigma))
        out = driver.process("market", [orjson.dumps({"instrument": "AAA", "event_time": T0 + day * DAY_MS,
                                                      "price": price})])
        alerts += [a for a in out.alerts if a["kind"] == "market_volatility_regime"]
    assert alerts, "no regime alert after the volatility rose sixfold"
    first_day = (alerts[0]["event_time"] * 1000 - T0) // DAY_MS
    assert 250 <= first_day <= 320 and alerts[0]["reasons"][0].startswith("VOLATILITY_REGIME: AAA")


def test_a_published_limit_set_is_swapped_in_and_a_bad_one_refused(tmp_path):
    from riskstream.streams.worker import RuleFeed

    driver = Driver(_settings(tmp_path), with_models=False)
    feed = RuleFeed(driver.settings, driver.rules, driver.market)
    feed.apply(b"limits", orjson.dumps({"text": LIMITS, "source_name": "limits.yaml"}))
    assert [lim.id for lim in driver.market.limits.limits] == ["pf-gross", "pf-var"]
    feed.apply(b"limits", orjson.dumps({"text": LIMITS.replace("gross", "grosss"), "source_name": "bad.yaml"}))
    assert [lim.id for lim in driver.market.limits.limits] == ["pf-gross", "pf-var"]  # the old set stays


@pytest.mark.integration
@pytest.mark.both_brokers
def test_limits_publish_validates_then_publishes_to_the_control_topic(stack, tmp_path, capsys, monkeypatch):
    from riskstream.cli import main
    from riskstream.rules.publishing import LIMITS_KEY, rule_history

    monkeypatch.setenv("RISKSTREAM_KAFKA_BOOTSTRAP", stack.kafka_bootstrap)
    good, bad = tmp_path / "limits.yaml", tmp_path / "bad.yaml"
    good.write_text(LIMITS)
    bad.write_text(LIMITS.replace("metric: gross", "metric: grosss"))
    assert main(["limits", "publish", str(bad)]) == 1
    assert "unknown metric 'grosss' (did you mean 'gross'?)" in capsys.readouterr().err
    assert main(["limits", "publish", str(good)]) == 0
    history = rule_history(stack, key=LIMITS_KEY)
    assert [h["source_name"] for h in history] == [str(good)] and history[0]["text"] == LIMITS
    assert rule_history(stack) == []  # rule sets are a key of their own


def test_positions_read_ahead_of_the_prices_wait_for_their_time(tmp_path):
    """A replayed backlog: every position update comes in one batch before the ticks of their
    days; each still counts from its own time, so the breach and its clearance both show."""
    limits = tmp_path / "limits.yaml"
    limits.write_text(LIMITS)
    driver = Driver(_settings(tmp_path, limits_file=str(limits)), with_models=False)
    rec = RecordingPublisher()
    ticks = [t for t in _ticks(20) if t["instrument"] == "AAA"]
    driver.run("market", [orjson.dumps(t) for t in ticks[:8]], rec)  # two days of prices
    updates = [(5, 1000), (10, 2500), (15, 500)]  # around 100 each: 100k, 250k, 50k gross
    driver.run("positions", [orjson.dumps({"portfolio_id": "PF1", "instrument": "AAA", "quantity": q,
                                           "event_time": T0 + d * DAY_MS}) for d, q in updates], rec)
    assert driver.market.positions.get("PF1") is None  # not yet: the prices are at day 2
    for start in range(8, len(ticks), 8):  # then the prices, two days at a time
        driver.run("market", [orjson.dumps(t) for t in ticks[start:start + 8]], rec)
    states = [orjson.loads(r)["state"] for r in rec.rows("limit_utilisation") if b"pf-gross" in r]
    assert states[-2:] == ["breach", "cleared"] and driver.market.positions["PF1"] == {"AAA": 500.0}


def test_the_demo_stream_has_market_history_and_a_portfolio_that_breaches_and_clears(tmp_path):
    from riskstream.demo import DEMO_LIMITS, DEMO_PORTFOLIO, MARKET_HISTORY_DAYS, build_stream

    # From a fixed day: by default the stream ends an hour before now, and the desk's path then
    # depends on the hour (at 09:00 UTC on 2026-12-06 it went breach, near, cleared, ok).
    stream = build_stream(3000, progress=lambda _: None, start_ms=1_788_220_800_000)  # 2026-09-01
    first_tx = None
    for topic, key, value in stream.messages:  # in time order; the first well-formed transaction
        if topic == "transactions" and not key.startswith(b"bad-"):
            first_tx = orjson.loads(value)["event_time"]
            break
    market = [orjson.loads(v) for t, _, v in stream.messages if t == "market"]
    assert first_tx - market[0]["event_time"] >= (MARKET_HISTORY_DAYS - 1) * DAY_MS
    demo = [orjson.loads(v) for t, _, v in stream.messages if t == "positions" and DEMO_PORTFOLIO.encode() in v]
    assert len(demo) == 3
    limits = tmp_path / "limits.yaml"
    limits.write_text(DEMO_LIMITS)
    driver = Driver(_settings(tmp_path, limits_file=str(limits)), with_models=False)
    rec = RecordingPublisher()
    batch, current = [], None  # consecutive messages of one topic, as a reader batches them
    for topic, _, value in [m for m in stream.messages if m[0] in ("market", "positions")] + [(None, b"", b"")]:
        if (topic != current or len(batch) == 1000) and batch:
            driver.run(current, batch, rec)
            batch = []
        current = topic
        batch.append(value)
    states = [orjson.loads(r) for r in rec.rows("limit_utilisation") if DEMO_PORTFOLIO.encode() in r]
    assert [s["state"] for s in states] == ["breach", "cleared"]
    assert states[0]["measured_at"] < states[1]["measured_at"]  # distinct keys in ClickHouse


def test_updates_read_in_one_batch_after_the_prices_each_keep_their_time(tmp_path):
    limits = tmp_path / "limits.yaml"
    limits.write_text(LIMITS)
    driver = Driver(_settings(tmp_path, limits_file=str(limits)), with_models=False)
    rec = RecordingPublisher()
    ticks = [t for t in _ticks(20) if t["instrument"] == "AAA"]
    driver.run("market", [orjson.dumps(t) for t in ticks], rec)  # the prices first, all of them
    driver.run("positions", [orjson.dumps({"portfolio_id": "PF1", "instrument": "AAA", "quantity": q,
                                           "event_time": T0 + d * DAY_MS}) for d, q in ((5, 2500), (15, 500))], rec)
    rows = [orjson.loads(r) for r in rec.rows("limit_utilisation") if b"pf-gross" in r]
    assert [(r["state"], r["measured_at"]) for r in rows] == [
        ("breach", (T0 + 5 * DAY_MS) / 1000), ("cleared", (T0 + 15 * DAY_MS) / 1000)]


@pytest.mark.integration
@pytest.mark.both_brokers
def test_market_state_follows_its_partition_to_another_worker(stack, worker_factory, tmp_path):
    """A breach seen by one worker is cleared by another after a rebalance: the breach state,
    positions and prices went over with the market partition (without them the second worker
    would see nothing to clear and the control would stay in Redis)."""
    import redis

    from tests.conftest import produce, wait_for

    limits = tmp_path / "limits.yaml"
    limits.write_text(LIMITS)
    env = {"RISKSTREAM_LIMITS_FILE": str(limits), "RISKSTREAM_RISK_REFRESH_INTERVAL_S": "0"}
    r = redis.Redis.from_url(stack.redis_url.get_secret_value())

    def position(qty: float, t: int) -> None:
        produce(stack, "positions", [(b"PF1", orjson.dumps({"portfolio_id": "PF1", "instrument": "AAA",
                                                             "event_time": t, "quantity": qty, "price": 100.0}))])

    import time

    now_ms = int(time.time() * 1000)  # a control lasts 24 h of event time from its breach
    first = worker_factory(extra_env=env)
    position(2500, now_ms)  # 250k of a 200k gross limit
    wait_for(lambda: r.hget("rs:limit:portfolio:PF1", "action"), 90, "the breach control", first)
    second = worker_factory(extra_env=env)
    wait_for(lambda: "assigned transaction partitions" in second.log_text(), 90, "the second worker to join", second)
    first.stop()
    wait_for(lambda: "market-risk state restored (1 portfolios, 1 instruments)" in second.log_text(), 90,
             "the market state on the second worker", second)
    position(500, now_ms + 60_000)
    wait_for(lambda: not r.exists("rs:limit:portfolio:PF1"), 90, "the control cleared by the second worker", second)
