"""Market-risk limits: a YAML file of limits per portfolio, desk or instrument, validated with
the line of every error, like the rule sets.

>>> text = '''
... version: "2026.12"
... near_utilisation: 0.8
... limits:
...   - {id: pf-var, scope: portfolio, entity: "*", metric: var_99, limit: 250000, action: block_new_risk}
...   - {id: desk-loss, scope: desk, entity: rates, metric: loss_day, limit: 1e6, action: cap_notional}
... '''
>>> limits = load_limits(text, "limits.yaml")
>>> [(lim.id, lim.metric, lim.limit) for lim in limits.limits]
[('pf-var', 'var_99', 250000.0), ('desk-loss', 'loss_day', 1000000.0)]
>>> try:
...     load_limits(text.replace("var_99", "var99"), "limits.yaml")
... except LimitSetError as exc:
...     print(exc)
limits.yaml:5: limit 'pf-var': unknown metric 'var99' (did you mean 'var_99'?)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import yaml

from riskstream.rules.yaml_nodes import Errors, compose, did_you_mean, mapping, unknown_keys
from riskstream.rules.yaml_nodes import line as node_line

SCOPES = ("portfolio", "desk", "instrument")
# Metric -> scopes it exists for. loss_day is the day's loss (the stop-loss); gross is the
# notional; concentration the largest single-name share of the gross.
METRICS = {
    "var_95": SCOPES[:2], "var_99": SCOPES[:2], "es_95": SCOPES[:2], "es_99": SCOPES[:2],
    "gross": SCOPES, "net": SCOPES[:2], "loss_day": SCOPES[:2], "drawdown": SCOPES[:2],
    "concentration": SCOPES[:2], "position": ("instrument",),
}
ACTIONS = ("block_new_risk", "cap_notional", "alert_only")
KEYS = ("id", "scope", "entity", "metric", "limit", "action", "near", "description")


class LimitSetError(Exception):
    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("\n".join(errors))


@dataclass(frozen=True)
class Limit:
    id: str
    scope: str
    entity: str  # an id, or "*" for every entity of the scope
    metric: str
    limit: float
    action: str
    near: float  # utilisation at which the limit is near (0-1)

    def applies_to(self, scope: str, entity: str) -> bool:
        return self.scope == scope and self.entity in ("*", entity)


@dataclass(frozen=True)
class LimitSet:
    version: str
    limits: tuple[Limit, ...]

    def for_entity(self, scope: str, entity: str) -> list[Limit]:
        return [lim for lim in self.limits if lim.applies_to(scope, entity)]


def load_limits(text: str, source: str = "limits") -> LimitSet:
    """Parse and validate; every problem is reported at once, each with its line."""
    err = Errors(source, noun="limit")
    root = compose(text, source, LimitSetError)
    top = mapping(root, err, "the limits file") if root is not None else None
    if top is None:
        raise LimitSetError(err.items or [f"{source}:1: expected a mapping with 'limits'"])
    unknown_keys(top, ("version", "near_utilisation", "limits", "description"), err, "the limits file")
    default_near = _number(top.get("near_utilisation", (None, None))[1], 0.8, err, None)
    items = top.get("limits", (None, None))[1]
    if not isinstance(items, yaml.SequenceNode):
        err.add(node_line(items) if items is not None else 1, "'limits' must be a list")
        raise LimitSetError(err.items)
    limits: list[Limit] = []
    seen: set[str] = set()
    for node in items.value:
        fields = mapping(node, err, "a limit")
        if fields is None:
            continue
        lid = fields["id"][1].value if "id" in fields else None
        unknown_keys(fields, KEYS, err, "a limit", lid)
        missing = [k for k in ("id", "scope", "entity", "metric", "limit") if k not in fields]
        if missing:
            err.add(node_line(node), f"missing {', '.join(missing)}", lid)
            continue
        if lid in seen:
            err.add(node_line(node), "id used twice", lid)
        seen.add(lid)
        value_of = {k: v for k, (_, v) in fields.items()}
        scope, metric = value_of["scope"].value, value_of["metric"].value
        action = value_of["action"].value if "action" in value_of else "alert_only"
        if scope not in SCOPES:
            err.add(node_line(value_of["scope"]), f"unknown scope '{scope}' (one of {', '.join(SCOPES)})", lid)
        if metric not in METRICS:
            err.add(node_line(value_of["metric"]), f"unknown metric '{metric}'{did_you_mean(metric, METRICS)}", lid)
        elif scope in SCOPES and scope not in METRICS[metric]:
            err.add(node_line(value_of["metric"]), f"metric '{metric}' has no meaning for a {scope} "
                                                   f"(it does for {', '.join(METRICS[metric])})", lid)
        if action not in ACTIONS:
            err.add(node_line(value_of["action"]), f"unknown action '{action}' (one of {', '.join(ACTIONS)})", lid)
        value = _number(value_of["limit"], None, err, lid)
        near = _number(value_of.get("near"), default_near, err, lid)
        if value is not None and value <= 0:
            err.add(node_line(value_of["limit"]), "limit must be above 0", lid)
        if near is not None and not 0 < near < 1:
            err.add(node_line(value_of.get("near") or node), "near must be between 0 and 1 (a share of the limit)", lid)
        if value is not None and near is not None:
            limits.append(Limit(lid, scope, str(value_of["entity"].value), metric, float(value), action, float(near)))
    if err.items:
        raise LimitSetError(err.items)
    version = top["version"][1].value if "version" in top else "limits"
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return LimitSet(f"{version}#{digest}", tuple(limits))


def _number(node, default, err: Errors, lid: str | None):
    if node is None:
        return default
    try:
        return float(node.value)
    except (TypeError, ValueError):
        err.add(node_line(node), f"expected a number, got {node.value!r}", lid)
        return None
