"""Loan outcomes reach the credit model through the driver, in event time, and its state
survives a restart (through the worker's state store in a real Valkey)."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from pydantic import SecretStr

from riskstream.schemas.events import DAY_MS
from riskstream.settings import Settings
from riskstream.sinks.publisher import RecordingPublisher
from riskstream.streams.driver import Driver

T0 = 1_700_000_000_000
LABEL_DELAY_MS = 90 * DAY_MS
# A risky-looking applicant by the scorecard prior (payment-to-income 0.5) who in this book
# always repays, and a safe-looking one (income 150k, score 800) who always defaults: the
# outcomes contradict the prior, so learning must move the PD.
RISKY = {"amount": 30_000, "income": 30_000, "term_months": 24, "existing_debt": 21_000, "credit_score": 560}
SAFE = {"amount": 5_000, "income": 150_000, "term_months": 36, "existing_debt": 1_000, "credit_score": 800}


def _settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path / "rs", pan_key=SecretStr("k" * 32))


def _book(n: int, seed: int = 3):
    """``n`` applications a day apart, alternating the two profiles, each with its outcome
    ``LABEL_DELAY_MS`` later."""
    rng = np.random.default_rng(seed)
    apps, labels = [], []
    for i in range(n):
        profile, defaulted = (SAFE, True) if i % 2 else (RISKY, False)
        t = T0 + i * DAY_MS + int(rng.integers(0, 3_600_000))
        apps.append({"application_id": f"a{i}", "event_time": t, "customer_id": f"c{i}", **profile})
        labels.append({"event_id": f"a{i}", "stream": "loan_applications", "label": "default" if defaulted else "repaid",
                       "label_time": t + LABEL_DELAY_MS, "entity_id": f"c{i}", "source": "bureau"})
    return apps, labels


def _replay(driver: Driver, apps: list[dict], labels: list[dict], publisher) -> None:
    """Applications and outcomes in event-time order, as the topics would deliver them."""
    stream = sorted([(a["event_time"], 0, "loan_applications", a) for a in apps]
                    + [(lab["label_time"], 1, "labels", lab) for lab in labels], key=lambda e: (e[0], e[1]))
    for _, _, name, event in stream:
        driver.run(name, [orjson.dumps(event)], publisher)


def _pd(driver: Driver, profile: dict) -> float:
    prob, _ = driver.loans.model.score_rows([profile])
    return float(prob[0])


def test_loan_outcomes_teach_the_credit_model_in_event_time(tmp_path):
    driver = Driver(_settings(tmp_path), with_models=False)
    risky0, safe0 = _pd(driver, RISKY), _pd(driver, SAFE)
    assert risky0 > 0.3 > 0.05 > safe0  # the scorecard prior: over the decline line, and under the refer line

    apps, labels = _book(400)
    # An outcome read long before its time waits until loans' event time reaches it.
    early = driver.process("labels", [orjson.dumps(labels[0])])
    assert early.learned == 0 and len(driver.clock) == 1
    published = RecordingPublisher()
    _replay(driver, apps, labels[1:], published)

    # Every outcome whose time came within the book was learned, none before its time.
    due = sum(lab["label_time"] <= apps[-1]["event_time"] for lab in labels)
    assert driver.loans.model.n_learned == due > 250
    assert len(driver.clock) == len(labels) - due
    risky1, safe1 = _pd(driver, RISKY), _pd(driver, SAFE)
    assert risky1 < risky0 - 0.2 and safe1 > safe0 + 0.2
    # Later decisions carry the learned model's version and PD.
    decisions = [orjson.loads(r) for r in published.rows("decisions")]
    assert len(decisions) == len(apps)
    assert decisions[0]["model_version"] == "credit_pd-0"
    assert decisions[-1]["model_version"] != decisions[0]["model_version"]
    first_risky = decisions[0]["score"]
    last_risky = next(d["score"] for d in reversed(decisions) if d["amount"] == RISKY["amount"])
    assert last_risky < first_risky - 0.2
    assert published.rows("labels") and published.rows("loan_applications")


@pytest.mark.integration
def test_credit_state_survives_a_restart_through_the_state_store(tmp_path, stack):
    from riskstream.sinks.kafka import connect_redis
    from riskstream.streams.state import StateStore

    apps, labels = _book(300)
    split = 200  # the worker stops after 200 applications: many outcomes still to come
    before = Driver(stack, with_models=False)
    _replay(before, apps[:split], [lab for lab in labels if lab["label_time"] <= apps[split - 1]["event_time"]],
            RecordingPublisher())
    # Outcomes read (the labels topic runs ahead) but not yet due wait in the clock.
    waiting = [lab for lab in labels if apps[split - 1]["event_time"] < lab["label_time"]]
    before.process("labels", [orjson.dumps(lab) for lab in waiting[:20]])
    learned, pd_before = before.loans.model.n_learned, _pd(before, RISKY)
    assert learned > 0 and len(before.clock) == 20
    redis = connect_redis(stack)
    StateStore(before, redis, "group-a").save_models()

    after = Driver(stack, with_models=False)
    assert StateStore(after, redis, "group-a").load_models()
    assert after.loans.model.n_learned == learned
    assert _pd(after, RISKY) == pytest.approx(pd_before)
    assert len(after.clock) == 20
    # The restored worker goes on: the remembered applications still learn from their outcomes.
    _replay(after, apps[split:], [lab for lab in waiting[20:]], RecordingPublisher())
    assert after.loans.model.n_learned > learned + 50
    assert _pd(after, RISKY) < pd_before


def test_an_outcome_waits_for_the_slowest_partition_of_applications(tmp_path):
    """Applications on two partitions, one far ahead: an outcome due by the fast partition's
    time waits until the slow one has decided (and remembered) the application it labels."""
    driver = Driver(_settings(tmp_path), with_models=False)
    driver.assign_partitions({0, 1}, "loan_applications")
    ahead = {"application_id": "fast", "event_time": T0 + 100 * DAY_MS, "customer_id": "c0", **SAFE}
    behind = {"application_id": "slow", "event_time": T0 + 10 * DAY_MS, "customer_id": "c1", **RISKY}
    driver.process("loan_applications", [orjson.dumps(ahead)], partitions=[0])
    driver.process("labels", [orjson.dumps({"event_id": "slow", "stream": "loan_applications", "label": "repaid",
                                            "label_time": T0 + 50 * DAY_MS, "entity_id": "c1"})])
    assert driver.loans.model.n_learned == 0 and len(driver.clock) == 1  # partition 1 has not got there
    driver.process("loan_applications", [orjson.dumps(behind)], partitions=[1])
    later = {"application_id": "next", "event_time": T0 + 60 * DAY_MS, "customer_id": "c2", **RISKY}
    out = driver.process("loan_applications", [orjson.dumps(later)], partitions=[1])
    assert out.learned == 1 and driver.loans.model.n_learned == 1 and len(driver.clock) == 0
