"""Grafana for the risk desk: one dashboard and a set of alert rules over the ClickHouse tables.

Everything is generated from :data:`PANELS` and :data:`ALERTS` (SQL over the tables in
``schemas/clickhouse.sql``), so the dashboard, the alert rules and the test that runs every
query against chDB cannot drift apart.

- ``riskstream grafana export --out deploy/grafana`` writes Grafana provisioning files
  (data source, dashboard provider, dashboard JSON, alert rules); ``docker-compose.yml``
  mounts them.
- ``riskstream grafana push --url http://grafana:3000 --token …`` creates or updates the
  dashboard and alert rules on a running Grafana through its HTTP API (grafana-client).

Queries use the ClickHouse plugin's macros ``$__timeFilter(col)`` and
``$__timeInterval(col)``; :func:`expand_macros` gives them concrete meaning for tests.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DATASOURCE_UID = "riskstream-clickhouse"
DASHBOARD_UID = "riskstream-risk-desk"
FOLDER = "riskstream"


@dataclass(frozen=True)
class Panel:
    title: str
    sql: str
    kind: str = "timeseries"  # timeseries | stat | table | barchart
    unit: str = ""
    width: int = 12
    description: str = ""


PANELS: tuple[Panel, ...] = (
    Panel("Decisions per minute", """
SELECT $__timeInterval(decided_at) AS time, decision, count() AS decisions
FROM decisions FINAL WHERE $__timeFilter(decided_at) AND stream = 'transactions'
GROUP BY time, decision ORDER BY time""", description="Transactions decided, by decision."),
    Panel("Decline and review rate", """
SELECT $__timeInterval(decided_at) AS time,
       countIf(decision = 'decline') / count() AS decline_rate,
       countIf(decision = 'review') / count() AS review_rate
FROM decisions FINAL WHERE $__timeFilter(decided_at) AND stream = 'transactions'
GROUP BY time ORDER BY time""", unit="percentunit"),
    Panel("Alerts by severity", """
SELECT $__timeInterval(raised_at) AS time, severity_level, count() AS alerts
FROM alerts FINAL WHERE $__timeFilter(raised_at) GROUP BY time, severity_level ORDER BY time"""),
    Panel("Amount at risk in alerts", """
SELECT $__timeInterval(raised_at) AS time, sum(amount_at_risk) AS amount_at_risk, sum(severity) AS expected_loss
FROM alerts FINAL WHERE $__timeFilter(raised_at) GROUP BY time ORDER BY time""", unit="currencyEUR"),
    Panel("Top reasons", """
SELECT splitByString(': ', arrayJoin(reasons))[1] AS reason_code, count() AS decisions
FROM decisions FINAL WHERE $__timeFilter(decided_at) AND decision != 'approve'
GROUP BY reason_code ORDER BY decisions DESC LIMIT 15""", kind="barchart"),
    Panel("Score distribution", """
SELECT floor(score * 20) / 20 AS score_bucket, count() AS decisions
FROM decisions FINAL WHERE $__timeFilter(decided_at) AND stream = 'transactions'
GROUP BY score_bucket ORDER BY score_bucket""", kind="barchart"),
    Panel("Limit controls issued", """
SELECT $__timeInterval(issued_at) AS time, action, count() AS controls
FROM limits FINAL WHERE $__timeFilter(issued_at) GROUP BY time, action ORDER BY time"""),
    Panel("Dead letters", """
SELECT $__timeInterval(received_at) AS time, topic, count() AS dead_letters
FROM dead_letters FINAL WHERE $__timeFilter(received_at) GROUP BY time, topic ORDER BY time""",
          description="Records that could not be processed; see the dead_letters table for reasons."),
    Panel("Model quality (from labels)", """
SELECT measured_at AS time, concat(metric, ' ', window) AS series, value
FROM model_quality FINAL WHERE $__timeFilter(measured_at) ORDER BY time"""),
    Panel("Loan decisions", """
SELECT $__timeInterval(decided_at) AS time, decision, count() AS applications
FROM decisions FINAL WHERE $__timeFilter(decided_at) AND stream = 'loan_applications'
GROUP BY time, decision ORDER BY time"""),
    Panel("Credit lines: over-limit declines and near-limit reviews", """
SELECT $__timeInterval(decided_at) AS time,
       countIf(arrayExists(r -> startsWith(r, 'OVER_LIMIT'), reasons)) AS over_limit_declines,
       countIf(arrayExists(r -> startsWith(r, 'NEAR_LIMIT'), reasons)) AS near_limit_reviews
FROM decisions FINAL WHERE $__timeFilter(decided_at) AND stream = 'transactions'
GROUP BY time ORDER BY time""", description="Card authorisations checked against their credit line (streams/ledger.py)."),
    Panel("Credit early warnings", """
SELECT $__timeInterval(raised_at) AS time, kind, count() AS alerts
FROM alerts FINAL WHERE $__timeFilter(raised_at) AND kind LIKE 'credit_%'
GROUP BY time, kind ORDER BY time""", description="Utilisation rising, cash advances, overdue, scores or PD rising."),
    Panel("Market risk: 99% VaR by portfolio", """
SELECT $__timeInterval(measured_at) AS time, portfolio_id, max(var_99) AS var_99_highest
FROM portfolio_risk FINAL WHERE $__timeFilter(measured_at) AND isNotNull(var_99)
GROUP BY time, portfolio_id ORDER BY time""", unit="currencyEUR"),
    Panel("Market limits: latest changes of state", """
SELECT measured_at, entity_type, entity_id, limit_id, metric, round(utilisation, 2) AS utilisation, state
FROM limit_utilisation FINAL WHERE $__timeFilter(measured_at)
ORDER BY measured_at DESC LIMIT 50""", kind="table"),
    Panel("Latest critical alerts", """
SELECT raised_at, entity_id, event_id, round(severity, 2) AS expected_loss, score, reasons
FROM alerts FINAL WHERE $__timeFilter(raised_at) AND severity_level IN ('critical', 'high')
ORDER BY raised_at DESC LIMIT 50""", kind="table", width=24),
)


@dataclass(frozen=True)
class AlertRule:
    uid: str
    title: str
    sql: str  # returns one numeric column `value` (last 15 minutes unless said otherwise)
    above: float
    summary: str
    for_: str = "5m"
    severity: str = "warning"


ALERTS: tuple[AlertRule, ...] = (
    AlertRule("rs-decline-rate", "Decline rate above 5%", """
SELECT if(count() = 0, 0, countIf(decision = 'decline') / count()) AS value
FROM decisions FINAL WHERE decided_at > now() - INTERVAL 15 MINUTE AND stream = 'transactions'""",
              0.05, "More than 5% of transactions declined in 15 minutes: an attack, or a bad rule or model."),
    AlertRule("rs-dead-letters", "Records dead-lettered", """
SELECT count() AS value FROM dead_letters FINAL WHERE received_at > now() - INTERVAL 15 MINUTE""",
              0, "Input that could not be processed in the last 15 minutes; see the dead_letters table.", "0m"),
    AlertRule("rs-critical-fraud", "Critical fraud alerts", """
SELECT count() AS value FROM alerts FINAL
WHERE raised_at > now() - INTERVAL 5 MINUTE AND severity_level = 'critical'""",
              0, "Expected loss over 1,000 on a single transaction in the last 5 minutes.", "0m", "critical"),
    AlertRule("rs-model-drift", "Fraud model drift", """
SELECT count() AS value FROM alerts FINAL
WHERE raised_at > now() - INTERVAL 1 HOUR AND kind LIKE 'model_drift%'""",
              0, "ADWIN detected a change in the model's error on labelled transactions.", "0m"),
    AlertRule("rs-auc-drop", "Fraud model ROC AUC below 0.80", """
SELECT 1 - argMax(value, measured_at) AS value FROM model_quality FINAL
WHERE metric = 'roc_auc' AND measured_at > now() - INTERVAL 1 DAY""",
              0.20, "The 7-day ROC AUC from labels fell under 0.80 (alert value is 1 - AUC)."),
    AlertRule("rs-market-limit-breach", "Market-risk limit breached", """
SELECT count() AS value FROM limit_utilisation FINAL
WHERE measured_at > now() - INTERVAL 5 MINUTE AND state = 'breach'""",
              0, "A portfolio, desk or instrument went over a limit; its control is in Redis and on the limits topic.",
              "0m", "critical"),
    AlertRule("rs-credit-warning", "Credit early warning (high)", """
SELECT count() AS value FROM alerts FINAL
WHERE raised_at > now() - INTERVAL 15 MINUTE AND kind LIKE 'credit_%' AND severity_level = 'high'""",
              0, "A credit line shows a strong sign of trouble over a large exposure; see the alert's reasons.", "0m"),
    AlertRule("rs-engine-stalled", "No decisions for 10 minutes", """
SELECT dateDiff('second', max(decided_at), now()) AS value FROM decisions FINAL
WHERE decided_at > now() - INTERVAL 1 DAY""",
              600, "No transaction was decided for 10 minutes: check the workers and the consumer lag."),
)


def expand_macros(sql: str, interval: str = "1 MINUTE", span: str = "1 DAY") -> str:
    """Concrete SQL for the plugin's macros (what Grafana does before sending the query)."""
    sql = re.sub(r"\$__timeInterval\((\w+)\)", rf"toStartOfInterval(\1, INTERVAL {interval})", sql)
    return re.sub(r"\$__timeFilter\((\w+)\)", rf"\1 >= now() - INTERVAL {span}", sql)


def _datasource_ref() -> dict[str, str]:
    return {"type": "grafana-clickhouse-datasource", "uid": DATASOURCE_UID}


def dashboard() -> dict[str, Any]:
    panels = []
    x = y = 0
    for i, p in enumerate(PANELS):
        if x + p.width > 24:
            x, y = 0, y + 8
        panel_type = {"barchart": "barchart", "table": "table", "stat": "stat"}.get(p.kind, "timeseries")
        panels.append({
            "id": i + 1,
            "type": panel_type,
            "title": p.title,
            "description": p.description,
            "datasource": _datasource_ref(),
            "gridPos": {"x": x, "y": y, "w": p.width, "h": 8},
            "fieldConfig": {"defaults": {"unit": p.unit} if p.unit else {}, "overrides": []},
            "targets": [{
                "refId": "A",
                "datasource": _datasource_ref(),
                "editorType": "sql",
                "queryType": "timeseries" if panel_type == "timeseries" else "table",
                "format": 0 if panel_type == "timeseries" else 1,
                "rawSql": p.sql.strip(),
            }],
        })
        x += p.width
    return {
        "uid": DASHBOARD_UID,
        "title": "riskstream: risk desk",
        "tags": ["riskstream", "fraud", "risk"],
        "timezone": "utc",
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "schemaVersion": 39,
        "panels": panels,
    }


def alert_rules() -> dict[str, Any]:
    """Grafana alerting provisioning (file format): query A, reduce B, threshold C."""
    rules = []
    for a in ALERTS:
        rules.append({
            "uid": a.uid,
            "title": a.title,
            "condition": "C",
            "for": a.for_,
            "noDataState": "OK",
            "execErrState": "Error",
            "labels": {"team": "risk-desk", "severity": a.severity},
            "annotations": {"summary": a.summary, "dashboardUid": DASHBOARD_UID},
            "data": [
                {"refId": "A", "datasourceUid": DATASOURCE_UID,
                 "relativeTimeRange": {"from": 900, "to": 0},
                 "model": {"refId": "A", "editorType": "sql", "format": 1, "queryType": "table",
                           "rawSql": a.sql.strip()}},
                {"refId": "B", "datasourceUid": "__expr__",
                 "model": {"refId": "B", "type": "reduce", "expression": "A", "reducer": "last"}},
                {"refId": "C", "datasourceUid": "__expr__",
                 "model": {"refId": "C", "type": "threshold", "expression": "B",
                           "conditions": [{"evaluator": {"type": "gt", "params": [a.above]}}]}},
            ],
        })
    return {"apiVersion": 1, "groups": [{"orgId": 1, "name": "riskstream", "folder": FOLDER,
                                         "interval": "1m", "rules": rules}]}


def datasource(host: str = "clickhouse", port: int = 8123, database: str = "default") -> dict[str, Any]:
    return {"apiVersion": 1, "datasources": [{
        "name": "riskstream ClickHouse", "uid": DATASOURCE_UID, "type": "grafana-clickhouse-datasource",
        "jsonData": {"host": host, "port": port, "protocol": "http", "defaultDatabase": database,
                     # Read-only: the analyst user of deploy/clickhouse/users.d (docker-compose.yml).
                     "username": "${CLICKHOUSE_USER}"},
        "secureJsonData": {"password": "${CLICKHOUSE_PASSWORD}"},
    }]}


def export(out: Path) -> list[Path]:
    """Write Grafana provisioning files under ``out``."""
    files = {
        out / "provisioning" / "datasources" / "riskstream.yaml": yaml.safe_dump(datasource(), sort_keys=False),
        out / "provisioning" / "dashboards" / "riskstream.yaml": yaml.safe_dump({"apiVersion": 1, "providers": [{
            "name": "riskstream", "folder": FOLDER, "type": "file", "disableDeletion": False,
            "options": {"path": "/var/lib/grafana/dashboards"}}]}, sort_keys=False),
        out / "provisioning" / "alerting" / "riskstream.yaml": yaml.safe_dump(alert_rules(), sort_keys=False),
        out / "dashboards" / "riskstream.json": json.dumps(dashboard(), indent=2) + "\n",
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return list(files)


def push(url: str, token: str | None = None, user: str | None = None, password: str | None = None) -> dict:
    """Create or update the dashboard and alert rules on a running Grafana."""
    from grafana_client import GrafanaApi

    if token:
        api = GrafanaApi.from_url(url, credential=token)
    else:
        api = GrafanaApi.from_url(url, credential=(user or "admin", password or "admin"))
    result = api.dashboard.update_dashboard({"dashboard": dashboard(), "overwrite": True,
                                             "message": "riskstream grafana push"})
    folder_uid = None
    for f in api.folder.get_all_folders():
        if f.get("title") == FOLDER:
            folder_uid = f["uid"]
    if folder_uid is None:
        folder_uid = api.folder.create_folder(FOLDER)["uid"]
    created = 0
    for rule in alert_rules()["groups"][0]["rules"]:
        body = {**rule, "folderUID": folder_uid, "ruleGroup": "riskstream", "orgID": 1}
        try:
            api.alertingprovisioning.update_alertrule(rule["uid"], body)
        except Exception:
            api.alertingprovisioning.create_alertrule(body)
        created += 1
    return {"dashboard": result.get("url", DASHBOARD_UID), "alert_rules": created}


