"""A lender's credit policy, in one YAML file: field names, policy rules, the PD model's
settings, the decision bands and the limit.

The ``rules`` (with ``lists``) are written in the rule language of the fraud rules
(``rules.language``) and compiled the same way, over a batch of applications: the amounts the
engine knows (``amount``, ``income``, ``term_months``, ``existing_debt``), the ratios
(``debt_to_income``, ``payment_to_income``, ``loan_to_income``), ``customer_id`` and the
attributes the file declares under ``attributes``. Their actions are ``decline``, ``review``
(refer to an underwriter) and ``allow`` (approve whatever the PD; a decline rule still wins).

Every error names the file and line, all at once::

    version: "2026.12.1"
    fields: {amount: credit_amount, term_months: duration_in_month}   # this lender's names
    attributes: {age: number, purpose: text}                         # what rules may name
    lists: {deny_customers: [c-000001]}
    rules:
      - {id: deny_list, version: 1, description: Refused before., action: decline,
         reason: {code: DENY_LIST, text: "customer {customer_id} is on the deny list"},
         when: customer_id in deny_customers}
    model: {prior_pd: 0.05, l2: 5.0, refit_every: 1}
    decision: {refer_pd: 0.10, decline_pd: 0.30}
    limit: {income_share: 0.5, max_amount: 50000}
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from riskstream.rules.language import validate_rule_set
from riskstream.rules.model import RuleSet, RuleSetError
from riskstream.rules.yaml_nodes import Errors, compose, did_you_mean, mapping, plain, unknown_keys
from riskstream.rules.yaml_nodes import line as node_line
from riskstream.schemas.events import LOAN_KNOWN

RATIOS = ("debt_to_income", "payment_to_income", "loan_to_income")
LOAN_RULE_ACTIONS = ("decline", "review", "allow")
SECTIONS = ("fields", "attributes", "model", "decision", "limit")
MODEL_KEYS = {"prior_pd": (0.05, 1e-4, 0.5), "l2": (5.0, 1e-6, 1e6), "intercept_l2": (1.0, 1e-6, 1e6),
              "min_each": (5, 0, 100_000), "refit_every": (1, 1, 1_000_000),
              "max_outcomes": (50_000, 100, 10_000_000), "max_categories": (50, 2, 10_000)}
DECISION_KEYS = {"refer_pd": (0.10, 0.0, 1.0), "decline_pd": (0.30, 0.0, 1.0)}
LIMIT_KEYS = {"income_share": (0.5, 0.0, 100.0), "max_amount": (50_000.0, 0.0, 1e12)}


class CreditPolicyError(RuleSetError):
    """Every problem of a credit policy file, each with its line."""


@dataclass(frozen=True)
class CreditPolicy:
    version: str
    source: str
    fields: Mapping[str, str]  # the engine's name -> the lender's
    attributes: Mapping[str, str]  # attribute -> number | text
    rule_set: RuleSet | None
    model: Mapping[str, float] = field(default_factory=dict)
    refer_pd: float = 0.10
    decline_pd: float = 0.30
    income_share: float = 0.5
    max_amount: float = 50_000.0

    @property
    def text_columns(self) -> frozenset[str]:
        return frozenset({"customer_id", "application_id"} | {a for a, k in self.attributes.items() if k == "text"})

    @property
    def numeric_columns(self) -> tuple[str, ...]:
        return (*LOAN_KNOWN, *RATIOS, *(a for a, k in self.attributes.items() if k == "number"))

    def decide(self, pd: float) -> str:
        return "decline" if pd >= self.decline_pd else "review" if pd >= self.refer_pd else "approve"

    def granted(self, pd: float, amount: float, income: float) -> float:
        """The amount or limit offered: the request, cut by a share of yearly income that
        shrinks as the PD nears the decline line, and by the ceiling; 0 when declined."""
        if pd >= self.decline_pd:
            return 0.0
        cap = self.max_amount
        if income == income:
            cap = min(cap, self.income_share * income * (1.0 - pd / self.decline_pd))
        return float(max(0.0, min(amount, cap) if amount == amount else cap))


def load_credit_policy(text: str, source: str = "credit policy") -> CreditPolicy:
    err = Errors(source, noun="setting")
    root = compose(text, source, CreditPolicyError)
    top = mapping(root, err, "the credit policy") if root is not None else None
    if top is None:
        raise CreditPolicyError(err.items or [f"{source}:1: empty credit policy (needs 'version')"])
    unknown_keys(top, ("version", "description", "mode", "lists", "rules", *SECTIONS), err, "the credit policy")

    fields = _name_map(top.get("fields"), err)
    attributes = _attributes(top.get("attributes"), err)
    model = _numbers(top.get("model"), MODEL_KEYS, err, "model")
    decision = _numbers(top.get("decision"), DECISION_KEYS, err, "decision")
    limit = _numbers(top.get("limit"), LIMIT_KEYS, err, "limit")
    if decision["refer_pd"] > decision["decline_pd"]:
        err.add(node_line(top["decision"][1]), f"refer_pd {decision['refer_pd']} is above decline_pd "
                                               f"{decision['decline_pd']}: the bands must rise")
    rule_set = None
    if "rules" in top:
        policy = CreditPolicy("", source, fields, attributes, None)
        try:
            rule_set = validate_rule_set(text, source, available_columns=(*policy.numeric_columns, *policy.text_columns),
                                         text_columns=policy.text_columns, extra_keys=SECTIONS,
                                         actions=LOAN_RULE_ACTIONS)
        except RuleSetError as exc:
            err.items += exc.errors
    elif "version" not in top:
        err.add(node_line(root), "missing 'version' (e.g. version: \"2026.12.1\")")
    if err.items:
        raise CreditPolicyError(sorted(set(err.items), key=_line_of))
    version = rule_set.version if rule_set is not None else str(plain(top["version"][1]))
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return CreditPolicy(f"{version}#{digest}", source, fields, attributes, rule_set, model,
                        decision["refer_pd"], decision["decline_pd"], limit["income_share"], limit["max_amount"])


def load_credit_policy_file(path: str | Path | None) -> CreditPolicy:
    """The policy at ``path``; none: the built-in ``rules/credit.yaml``."""
    p = Path(path) if path else Path(__file__).with_name("credit.yaml")
    if not p.exists():
        from riskstream.settings import ConfigError

        raise ConfigError(f"credit_file {p}: not found (RISKSTREAM_CREDIT_FILE).")
    return load_credit_policy(p.read_text(), str(p))


def _line_of(message: str) -> int:
    try:
        return int(message.split(":")[1])
    except (IndexError, ValueError):
        return 0


def _name_map(entry: Any, err: Errors) -> dict[str, str]:
    if entry is None:
        return {}
    m = mapping(entry[1], err, "'fields'")
    out: dict[str, str] = {}
    for name, (knode, vnode) in (m or {}).items():
        if name not in LOAN_KNOWN:
            err.add(node_line(knode), f"'fields': '{name}' is not a field the engine knows"
                                      f"{did_you_mean(name, LOAN_KNOWN)} (one of {', '.join(LOAN_KNOWN)})")
        elif not isinstance(vnode, yaml.ScalarNode) or not str(vnode.value).strip():
            err.add(node_line(vnode), f"'fields': '{name}' needs the name the lender's applications use")
        else:
            out[name] = str(vnode.value)
    return out


def _attributes(entry: Any, err: Errors) -> dict[str, str]:
    if entry is None:
        return {}
    m = mapping(entry[1], err, "'attributes'")
    out: dict[str, str] = {}
    for name, (knode, vnode) in (m or {}).items():
        kind = vnode.value if isinstance(vnode, yaml.ScalarNode) else None
        if kind not in ("number", "text"):
            err.add(node_line(vnode), f"attribute '{name}': kind must be number or text, got {kind!r}")
        elif name in LOAN_KNOWN or name in RATIOS:
            err.add(node_line(knode), f"attribute '{name}' is a field the engine knows already")
        else:
            out[name] = kind
    return out


def _numbers(entry: Any, spec: Mapping[str, tuple[float, float, float]], err: Errors, section: str) -> dict[str, float]:
    out = {k: default for k, (default, _, _) in spec.items()}
    if entry is None:
        return out
    m = mapping(entry[1], err, f"'{section}'")
    for name, (knode, vnode) in (m or {}).items():
        if name not in spec:
            err.add(node_line(knode), f"'{section}': unknown setting '{name}'{did_you_mean(name, spec)} "
                                      f"(one of {', '.join(spec)})")
            continue
        default, lo, hi = spec[name]
        try:
            value = float(vnode.value)
        except (TypeError, ValueError):
            err.add(node_line(vnode), f"'{section}.{name}': expected a number, got {vnode.value!r}")
            continue
        if not lo <= value <= hi:
            err.add(node_line(vnode), f"'{section}.{name}' = {value:g} is outside [{lo:g}, {hi:g}]")
            continue
        out[name] = int(value) if isinstance(default, int) else value
    return out
