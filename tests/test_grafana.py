"""The dashboard and alert rules: every query runs against the real schema in chDB."""

from __future__ import annotations

import json
import time

import orjson
import pytest
import yaml

from riskstream.settings import Settings
from riskstream.sinks import grafana
from riskstream.sinks.clickhouse import ensure_schema, open_client


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("graf"))
    c = open_client(settings)
    ensure_schema(c)
    now = time.time()
    rows = [{"event_id": f"e{i}", "stream": "transactions", "entity_id": "c1", "event_time": now - 60,
             "decided_at": now - 30, "score": 0.9 if i == 0 else 0.1, "decision": "decline" if i == 0 else "approve",
             "reasons": ["DENY_COUNTRY: transaction from KP"] if i == 0 else [], "rules_version": "v",
             "model_version": "m", "amount": 10.0} for i in range(10)]
    c.raw_insert("decisions", None, b"\n".join(orjson.dumps(r) for r in rows), fmt="JSONEachRow")
    c.raw_insert("alerts", None, orjson.dumps({
        "alert_id": "a1", "event_id": "e0", "stream": "transactions", "entity_id": "c1", "event_time": now - 60,
        "raised_at": now - 30, "kind": "fraud_decline", "severity": 1500.0, "severity_level": "critical",
        "score": 0.9, "amount_at_risk": 1666.0, "reasons": ["x"], "rules_version": "v"}), fmt="JSONEachRow")
    return c


@pytest.mark.parametrize("panel", grafana.PANELS, ids=lambda p: p.title)
def test_every_panel_query_runs_on_the_schema(client, panel):
    # Empty tables return no rows, but the header shows the query compiled against the schema.
    out = client.raw_query(grafana.expand_macros(panel.sql), fmt="TSVWithNames").decode()
    header = out.splitlines()[0].split("\t")
    assert len(header) >= 2, (panel.title, out)


def test_panels_see_the_data(client):
    top = client.query(grafana.expand_macros(next(p for p in grafana.PANELS if p.title == "Top reasons").sql))
    assert ("DENY_COUNTRY", 1) in [tuple(r) for r in top.result_rows]


@pytest.mark.parametrize("rule", grafana.ALERTS, ids=lambda a: a.uid)
def test_every_alert_query_returns_one_value(client, rule):
    rows = client.query(rule.sql).result_rows
    assert len(rows) == 1 and len(rows[0]) == 1
    float(rows[0][0])


def test_alert_values_on_known_data(client):
    values = {a.uid: float(client.query(a.sql).result_rows[0][0]) for a in grafana.ALERTS}
    assert values["rs-decline-rate"] == pytest.approx(0.1)  # 1 of 10 declined: above 5%
    assert values["rs-decline-rate"] > next(a.above for a in grafana.ALERTS if a.uid == "rs-decline-rate")
    assert values["rs-critical-fraud"] == 1
    assert values["rs-dead-letters"] == 0


def test_export_writes_consistent_provisioning(tmp_path):
    paths = grafana.export(tmp_path)
    assert len(paths) == 4
    dash = json.loads((tmp_path / "dashboards" / "riskstream.json").read_text())
    assert [p["title"] for p in dash["panels"]] == [p.title for p in grafana.PANELS]
    assert all(t["datasource"]["uid"] == grafana.DATASOURCE_UID for p in dash["panels"] for t in p["targets"])
    alerts = yaml.safe_load((tmp_path / "provisioning" / "alerting" / "riskstream.yaml").read_text())
    assert [r["uid"] for r in alerts["groups"][0]["rules"]] == [a.uid for a in grafana.ALERTS]
    ds = yaml.safe_load((tmp_path / "provisioning" / "datasources" / "riskstream.yaml").read_text())
    assert ds["datasources"][0]["uid"] == grafana.DATASOURCE_UID


def test_committed_provisioning_matches_the_code(tmp_path):
    """deploy/grafana (mounted by docker-compose) is regenerated from the code, not edited by hand."""
    from pathlib import Path

    grafana.export(tmp_path)
    committed = Path(__file__).resolve().parent.parent / "deploy" / "grafana"
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert (committed / path.relative_to(tmp_path)).read_text() == path.read_text(), path
