"""Early warning on credit lines: each signal fires when it should, once, and re-arms."""

from __future__ import annotations

import math

import orjson
from pydantic import SecretStr

from riskstream.settings import Settings
from riskstream.streams.driver import Driver
from riskstream.streams.early_warning import DAY_MS, EarlyWarning, Observation

T0 = 1_700_000_000_000


def _auth(day: float, utilisation: float, amount: float = 50.0, cash: bool = False, score: float = 0.05,
          balance: float = 0.0) -> Observation:
    return Observation("L1", int(T0 + day * DAY_MS), "auth", amount, utilisation, utilisation * 1000, balance,
                       is_cash=cash, score=score)


def _kinds(alerts) -> list[str]:
    return [a["kind"] for a in alerts]


def test_utilisation_climbing_above_its_month_average_warns_once_and_rearms():
    w = EarlyWarning()
    calm = [_auth(d, 0.15) for d in range(40)]
    assert w.observe(calm) == []
    jump = w.observe([_auth(41, 0.55), _auth(42, 0.85)])
    assert _kinds(jump) == ["credit_utilisation_rising"]
    assert "85% used, up from a month average of" in jump[0]["reasons"][0]
    assert jump[0]["severity"] > 0 and jump[0]["severity_level"] in ("low", "medium", "high")
    assert w.observe([_auth(43, 0.9)]) == []  # still up: no second alert
    assert w.observe([_auth(80 + d, 0.2) for d in range(60)]) == []  # back down for two months
    assert _kinds(w.observe([_auth(141, 0.9)])) == ["credit_utilisation_rising"]


def test_a_rising_share_of_cash_withdrawals_warns():
    w = EarlyWarning()
    assert w.observe([_auth(d / 2, 0.2) for d in range(40)]) == []
    alerts = w.observe([_auth(20 + d / 4, 0.2, amount=80.0, cash=True) for d in range(12)])
    assert _kinds(alerts) == ["credit_cash_advance_share"]


def test_owing_without_a_repayment_for_a_cycle_is_overdue_once_per_cycle():
    w = EarlyWarning()
    assert w.observe([_auth(0, 0.3, balance=300.0), _auth(20, 0.3, balance=300.0)]) == []
    late = w.observe([_auth(36, 0.3, balance=300.0), _auth(40, 0.3, balance=300.0)])
    assert _kinds(late) == ["credit_payment_overdue"] and "owed 300.00 for 36 days" in late[0]["reasons"][0]
    paid = Observation("L1", T0 + 41 * DAY_MS, "repay", 300.0, 0.1, 100.0, 100.0)
    assert w.observe([paid, _auth(70, 0.1, balance=100.0)]) == []
    assert _kinds(w.observe([_auth(77, 0.1, balance=100.0)])) == ["credit_payment_overdue"]


def test_fraud_scores_rising_on_a_line_warn():
    w = EarlyWarning()
    assert w.observe([_auth(d, 0.2, score=0.05) for d in range(60)]) == []
    alerts = w.observe([_auth(60 + d / 4, 0.2, score=0.8) for d in range(8)])
    assert _kinds(alerts) == ["credit_score_rising"]


def test_a_customer_applying_again_with_a_much_higher_pd_warns(tmp_path):
    driver = Driver(Settings(data_dir=tmp_path / "rs", pan_key=SecretStr("k" * 32)), with_models=False)
    good = {"amount": 5000, "income": 80000, "term_months": 36, "existing_debt": 2000}
    worse = {"amount": 30000, "income": 30000, "term_months": 12, "existing_debt": 15000}
    first = driver.process("loan_applications", [orjson.dumps(
        {"application_id": "a1", "event_time": T0, "customer_id": "c7", **good})])
    assert first.alerts == []
    second = driver.process("loan_applications", [orjson.dumps(
        {"application_id": "a2", "event_time": T0 + 30 * DAY_MS, "customer_id": "c7", **worse})])
    assert _kinds(second.alerts) == ["credit_pd_rising"] and second.alerts[0]["entity_id"] == "c7"
    assert not math.isnan(driver.warning.store.states["c7"]["pd"])
