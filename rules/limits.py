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

from riskstream.rules.model import did_you_mean

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
    errors: list[str] = []
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise LimitSetError([f"{source}:{mark.line + 1 if mark else 1}: not valid YAML: {exc}"]) from None
    if not isinstance(root, yaml.MappingNode):
        raise LimitSetError([f"{source}:1: expected a mapping with 'limits'"])
    top = {k.value: v for k, v in root.value}
    unknown = set(top) - {"version", "near_utilisation", "limits", "description"}
    for k, _ in root.value:
        if k.value in unknown:
            errors.append(f"{source}:{k.start_mark.line + 1}: unknown key '{k.value}'")
    default_near = _number(top.get("near_utilisation"), 0.8, source, errors, None)
    items = top.get("limits")
    if not isinstance(items, yaml.SequenceNode):
        line = items.start_mark.line + 1 if items is not None else 1
        raise LimitSetError(errors + [f"{source}:{line}: 'limits' must be a list"])
    limits: list[Limit] = []
    seen: set[str] = set()
    for node in items.value:
        line = node.start_mark.line + 1
        if not isinstance(node, yaml.MappingNode):
            errors.append(f"{source}:{line}: each limit is a mapping")
            continue
        fields = {k.value: v for k, v in node.value}
        lid = fields["id"].value if "id" in fields else None

        def err(msg: str, at=node) -> None:
            errors.append(f"{source}:{at.start_mark.line + 1}: " + (f"limit '{lid}': " if lid else "") + msg)

        for k, _ in node.value:
            if k.value not in KEYS:
                err(f"unknown key '{k.value}'{did_you_mean(k.value, KEYS)}", k)
        missing = [k for k in ("id", "scope", "entity", "metric", "limit") if k not in fields]
        if missing:
            err(f"missing {', '.join(missing)}")
            continue
        if lid in seen:
            err("id used twice")
        seen.add(lid)
        scope, metric = fields["scope"].value, fields["metric"].value
        action = fields["action"].value if "action" in fields else "alert_only"
        if scope not in SCOPES:
            err(f"unknown scope '{scope}' (one of {', '.join(SCOPES)})", fields["scope"])
        if metric not in METRICS:
            err(f"unknown metric '{metric}'{did_you_mean(metric, METRICS)}", fields["metric"])
        elif scope in SCOPES and scope not in METRICS[metric]:
            err(f"metric '{metric}' has no meaning for a {scope} (it does for {', '.join(METRICS[metric])})",
                fields["metric"])
        if action not in ACTIONS:
            err(f"unknown action '{action}' (one of {', '.join(ACTIONS)})", fields["action"])
        value = _number(fields["limit"], None, source, errors, lid)
        near = _number(fields.get("near"), default_near, source, errors, lid)
        if value is not None and value <= 0:
            err("limit must be above 0", fields["limit"])
        if near is not None and not 0 < near < 1:
            err("near must be between 0 and 1 (a share of the limit)", fields.get("near") or node)
        if value is not None and near is not None:
            limits.append(Limit(lid, scope, str(fields["entity"].value), metric, float(value), action, float(near)))
    if errors:
        raise LimitSetError(errors)
    version = top["version"].value if "version" in top else "limits"
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return LimitSet(f"{version}#{digest}", tuple(limits))


def _number(node, default, source: str, errors: list[str], lid: str | None):
    if node is None:
        return default
    try:
        return float(node.value)
    except (TypeError, ValueError):
        who = f"limit '{lid}': " if lid else ""
        errors.append(f"{source}:{node.start_mark.line + 1}: {who}expected a number, got {node.value!r}")
        return None
