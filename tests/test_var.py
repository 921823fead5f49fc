"""VaR/ES models and their backtests: kernel parity, no look-ahead, the tests' arithmetic, the
command, and the default model on the S&P 500 closes that the arch package ships."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from riskstream.detectors import var_kernels as k
from riskstream.detectors.var_backtest import backtest, basel_zones, christoffersen, es_test, kupiec
from riskstream.detectors.var_models import DEFAULT_MODEL, MODELS, forecast


def _returns(n: int = 1600, seed: int = 4) -> np.ndarray:
    """GARCH-like returns with fat tails: volatility clusters, so the filters have work to do."""
    rng = np.random.default_rng(seed)
    out, var = np.empty(n), 1e-4
    for t in range(n):
        out[t] = math.sqrt(var) * rng.standard_t(5) / math.sqrt(5 / 3)
        var = 2e-6 + (0.05 + 0.1 * (out[t] < 0)) * out[t] ** 2 + 0.88 * var
    return out


@pytest.mark.parametrize("kernel, reference, args", [
    (k.ewma_variance, k.ewma_variance_reference, (0.94, 1e-4)),
    (k.gjr_variance, k.gjr_variance_reference, (2e-6, 0.05, 0.1, 0.85, 1e-4)),
])
def test_variance_kernels_match_their_references(kernel, reference, args):
    r = _returns(500)
    got, want = np.empty(500), np.empty(500)
    kernel(r, *args, got)
    reference(r, *args, want)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_historical_kernel_matches_its_reference_and_numpy():
    losses = -_returns(700)
    got = np.empty(700), np.empty(700)
    want = np.empty(700), np.empty(700)
    k.historical_var_es(losses, 250, 0.99, *got)
    k.historical_var_es_reference(losses, 250, 0.99, *want)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-12, equal_nan=True)
    assert got[0][400] == pytest.approx(np.quantile(losses[150:400], 0.99))


@pytest.mark.parametrize("model", sorted(MODELS))
def test_no_model_looks_ahead(model):
    """A day's forecast depends only on the returns before it: changing the future changes
    nothing before it."""
    r = _returns()
    cut = 1100
    changed = r.copy()
    changed[cut:] = np.random.default_rng(9).normal(0, 0.05, len(r) - cut)
    a, b = forecast(model, r, 0.99), forecast(model, changed, 0.99)
    np.testing.assert_array_equal(a.var[:cut + 1], b.var[:cut + 1])
    np.testing.assert_array_equal(a.es[:cut + 1], b.es[:cut + 1])
    ok = ~np.isnan(a.var)
    assert ok[600:].all() and (a.es[ok] >= a.var[ok] - 1e-12).all()


def test_kupiec_and_christoffersen_by_hand():
    e = np.zeros(1000, bool)
    e[[10, 11, 12, 500, 900]] = True
    pof = kupiec(e, 0.99)
    # -2 ln[(0.99^995 0.01^5) / ((995/1000)^995 (5/1000)^5)]
    expected = -2 * (995 * math.log(0.99) + 5 * math.log(0.01) - 995 * math.log(0.995) - 5 * math.log(0.005))
    assert pof["exceptions"] == 5 and pof["lr"] == pytest.approx(expected)
    ind = christoffersen(e)
    assert ind["transitions"] == {"n00": 991, "n01": 3, "n10": 3, "n11": 2}
    assert ind["lr_independence"] > 6.63  # three exceptions in a row: clustering, rejected at 1%


def test_basel_zones_at_99_percent():
    e = np.zeros(600, bool)
    e[:5] = True  # five in the first window: yellow
    e[300:310] = True  # ten: red
    zones = basel_zones(e, 0.99)
    assert zones["limits"] == {"yellow_from": 5, "red_from": 10}
    assert zones["worst"] == 10 and zones["red"] > 0 and zones["yellow"] > 0
    assert zones["green"] + zones["yellow"] + zones["red"] == zones["windows"] == 351


def test_es_test_accepts_the_true_tail_and_rejects_an_understated_one():
    from scipy import stats

    rng = np.random.default_rng(3)
    n, nu, c = 4000, 4.0, 0.99
    sigma = np.exp(rng.normal(-4.5, 0.3, n))
    scale = sigma / math.sqrt(nu / (nu - 2))
    returns = stats.t.rvs(nu, size=n, random_state=rng) * scale
    q = stats.t.ppf(c, nu)
    var = q * scale
    es = stats.t.pdf(q, nu) / (1 - c) * (nu + q * q) / (nu - 1) * scale
    assert es_test(returns, var, es, c)["p_value"] > 0.05
    assert es_test(returns, 0.7 * var, 0.7 * es, c)["p_value"] < 0.01  # a tail 30% too thin


def test_the_default_model_passes_on_the_sp500_and_the_baselines_do_not():
    """The S&P 500 closes shipped with arch, 99% one-day VaR over 2001-2018: the reference
    figures of EWMA-normal (96 exceptions) and 250-day historical simulation (75) fail
    Kupiec; the default model must pass every test."""
    from arch.data import sp500

    closes = sp500.load()["Adj Close"]
    r = np.diff(np.log(closes.values))
    start = int(np.searchsorted(closes.index[1:], np.datetime64("2001-01-01")))
    results = {}
    for model in ("ewma", "hs", DEFAULT_MODEL):
        f = forecast(model, r, 0.99)
        results[model] = backtest(r[start:], f.var[start:], f.es[start:], 0.99)
    assert (results["ewma"]["exceptions"], results["hs"]["exceptions"]) == (96, 75)
    assert results["ewma"]["kupiec_lr"] > 3.84 and results["hs"]["kupiec_lr"] > 3.84
    best = results[DEFAULT_MODEL]
    assert best["kupiec_lr"] < 3.84 and best["conditional_coverage_lr"] < 5.99
    assert best["basel"]["red"] == 0 and best["es_test"]["p_value"] >= 0.05


def test_var_backtest_command_writes_days_json_and_a_chart(tmp_path, capsys):
    from riskstream.cli import main

    prices = 100 * np.exp(np.cumsum(_returns(900)))
    days = np.datetime64("2015-01-01") + np.arange(900)
    path = tmp_path / "prices.csv"
    path.write_text("day,close\n" + "\n".join(f"{d},{p}" for d, p in zip(days, prices)))
    out, png = tmp_path / "days.csv", tmp_path / "chart.png"
    assert main(["var-backtest", str(path), "--date-column", "day", "--price-column", "close", "--model", "all",
                 "--out", str(out), "--plot", str(png), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["models"]) == set(MODELS) and res["confidence"] == 0.99
    rows = out.read_text().splitlines()
    assert rows[0] == "date,return,var,es,exception" and len(rows) - 1 == res["models"][DEFAULT_MODEL]["days"]
    exceptions = sum(int(line.rsplit(",", 1)[1]) for line in rows[1:])
    assert exceptions == res["models"][DEFAULT_MODEL]["exceptions"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_var_backtest_names_the_bad_line_and_the_missing_column(tmp_path, capsys):
    from riskstream.cli import main

    path = tmp_path / "prices.csv"
    path.write_text("day,close\n2020-01-01,10\n2020-01-02,-3\n")
    assert main(["var-backtest", str(path), "--date-column", "day", "--price-column", "close"]) == 2
    assert "file lines 3" in capsys.readouterr().err
    assert main(["var-backtest", str(path), "--date-column", "date", "--price-column", "close"]) == 2
    assert "no column 'date' (--date-column); its columns are: day, close" in capsys.readouterr().err
