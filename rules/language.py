"""The fraud team's rule language: YAML rule sets, parsed and validated without eval.

A rule set names its lists and its rules; each rule has a condition tree (``when``), an
action and a reason. Conditions come in a structured form and in a compact string form
parsed by ``rules.conditions`` (never Python ``eval``). This module reads the YAML into a
``rules.model.RuleSet`` and reports every error with its line:

>>> text = '''
... version: "2024.06"
... lists:
...   deny_countries: [KP, IR]
... rules:
...   - id: velocity_1h
...     version: 3
...     description: Card testing, many small payments within an hour.
...     action: review
...     reason: {code: VELOCITY_1H, text: "{card_txn_count_1h} transactions on this card in the last hour"}
...     when: card_txn_count_1h >= 5 and amount < 5
...   - id: deny_country
...     version: 1
...     description: Countries we do not serve.
...     action: decline
...     reason: {code: DENY_COUNTRY, text: "country {country} is on the deny list"}
...     when: {feature: country, op: in_list, list: deny_countries}
...   - id: big_vs_habit
...     version: 1
...     mode: shadow
...     description: Far above what this card usually spends.
...     action: step_up
...     reason: {code: AMOUNT_VS_HABIT, text: "{amount:.2f} is {card_amount_ratio_30d:.1f}x the usual"}
...     when:
...       all:
...         - amount between 500 and 1e6
...         - {feature: card_amount_ratio_30d, op: ">", value: 8}
...         - not (channel == 'pos')
... '''
>>> rs = validate_rule_set(text, "demo.yaml")
>>> [r.id for r in rs.rules], rs.version_tag.startswith("2024.06#")
(['velocity_1h', 'deny_country', 'big_vs_habit'], True)
>>> rs.rules[0].when.to_text()
'((card_txn_count_1h >= 5.0) and (amount < 5.0))'
>>> try:
...     validate_rule_set(text.replace(">= 5", "=> 5"), "demo.yaml")
... except RuleSetError as exc:
...     print(exc)
demo.yaml:11: rule 'velocity_1h': unknown operator '=>' (use one of >, >=, <, <=, ==, !=) in "card_txn_count_1h => 5 and amount < 5"

Semantics worth knowing:

* Numbers are compared as float64. A missing value is NaN, and every comparison with NaN
  is false, so ``not (x > 5)`` is true when ``x`` is missing. ``between`` is inclusive.
* Text columns (``STRING_COLUMNS``) take only ``== 'text'``, ``!= 'text'``, ``in LIST`` and
  ``not in LIST``; numeric columns take only arithmetic comparisons and ``between``.
* ``mode: shadow`` on a rule (or on the whole set) means the rule is evaluated and its hits
  recorded, but it never changes a decision.
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import yaml

from riskstream.rules.conditions import (
    COMPARISON_OPS, All, AnyOf, Between, Col, Compare, Condition, ConditionSyntaxError, Expr, InList, Not, Num,
    _Parser, expr_columns_with_lines, parse_expression, walk,
)
from riskstream.rules.model import (
    ACTION_PARAMS, ACTIONS, MODES, SEVERITIES, STRING_COLUMNS, ReasonTemplate, Rule, RuleSet, RuleSetError,
)
from riskstream.rules.yaml_nodes import (
    Errors, compose, did_you_mean, mapping, plain, scalar_text, string_line_of, unknown_keys,
)
from riskstream.rules.yaml_nodes import line as node_line
from riskstream.schemas.pan import looks_like_pan

STRUCTURED_OPS = COMPARISON_OPS + ("between", "in_list", "not_in_list")
_RULE_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
_REASON_CODE = re.compile(r"^[A-Z][A-Z0-9_]{0,47}$")
# Rule sets come from whoever may publish them, so their size is bounded: a kernel of a
# thousand rules compiles in seconds, and a list is held in every worker's memory.
MAX_RULES = 1000
MAX_LIST_VALUES = 1_000_000
_LIST_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ======================================================================================
# Validation: YAML node tree -> RuleSet, all errors at once
# ======================================================================================
_LIST_KEYS = ("values", "file", "description")
_RULE_KEYS = ("id", "version", "description", "action", "params", "reason", "severity", "mode",
              "enabled", "when")
_TOP_KEYS = ("version", "description", "mode", "lists", "rules")
_COND_KEYS = ("all", "any", "not", "feature")


class _Validator:
    def __init__(self, source: str, err: Errors, list_files: Mapping[str, str] | None,
                 base_dir: Path | None, available: set[str] | None, text_columns: frozenset[str] = STRING_COLUMNS,
                 actions: tuple[str, ...] = ACTIONS):
        self.source = source
        self.text_columns = text_columns
        self.actions = actions
        self.available = available
        self.rule_lines: dict[str, int] = {}
        self.err = err
        self.list_files = dict(list_files or {})
        self.base_dir = base_dir
        self.lists: dict[str, frozenset[str]] = {}
        self.list_lines: dict[str, int] = {}
        self.resolved_files: dict[str, list[str]] = {}

    # -- lists -----------------------------------------------------------------
    def lists_node(self, node: yaml.Node) -> None:
        m = mapping(node, self.err, "'lists'")
        if m is None:
            return
        for name, (key, value) in m.items():
            line = node_line(key)
            if not _LIST_NAME.match(name):
                self.err.add(line, f"list name '{name}' must be letters, digits and _")
                continue
            self.list_lines[name] = line
            values = self.list_values(name, value)
            if values is not None and len(values) > MAX_LIST_VALUES:
                self.err.add(line, f"list '{name}' has {len(values):,} values, at most {MAX_LIST_VALUES:,}")
            elif values is not None:
                self.lists[name] = frozenset(values)

    def list_values(self, name: str, node: yaml.Node) -> list[str] | None:
        where = f"list '{name}'"
        if isinstance(node, yaml.SequenceNode):
            return self.value_items(name, node)
        m = mapping(node, self.err, where)
        if m is None:
            return None
        unknown_keys(m, _LIST_KEYS, self.err, where)
        if ("values" in m) == ("file" in m):
            self.err.add(node_line(node), f"{where} needs exactly one of 'values' or 'file'")
            return None
        if "values" in m:
            value_node = m["values"][1]
            if not isinstance(value_node, yaml.SequenceNode):
                self.err.add(node_line(value_node), f"{where}: 'values' must be a sequence")
                return None
            return self.value_items(name, value_node)
        path = scalar_text(m["file"][1], self.err, f"{where}: 'file'")
        if path is None:
            return None
        content = self.read_list_file(path, node_line(m["file"][1]), where)
        if content is None:
            return None
        values = []
        for lineno, raw in enumerate(content.splitlines(), 1):
            value = raw.strip()
            if not value or value.startswith("#"):
                continue
            if looks_like_pan(value):
                self.err.add(node_line(m["file"][1]), f"{where}: {path}:{lineno} looks like a card number; "
                                                  "lists hold card tokens as they appear in the stream, never PANs")
                continue
            values.append(value)
        self.resolved_files[path] = sorted(set(values))
        return values

    def read_list_file(self, path: str, line: int, where: str) -> str | None:
        if path in self.list_files:
            return self.list_files[path]
        full = Path(path)
        if not full.is_absolute() and self.base_dir is not None:
            full = self.base_dir / full
        try:
            return full.read_text()
        except OSError as exc:
            self.err.add(line, f"{where}: cannot read list file {full}: {exc.strerror or exc}")
            return None

    def value_items(self, name: str, node: yaml.SequenceNode) -> list[str]:
        values = []
        for item in node.value:
            if not isinstance(item, yaml.ScalarNode) or item.tag == "tag:yaml.org,2002:null":
                self.err.add(node_line(item), f"list '{name}': values must be plain text")
                continue
            value = str(item.value)
            if looks_like_pan(value):
                self.err.add(node_line(item), f"list '{name}': a value looks like a card number; lists hold "
                                          "card tokens as they appear in the stream, never PANs")
                continue
            values.append(value)
        return values

    # -- rules -----------------------------------------------------------------
    def rule(self, node: yaml.Node, index: int, set_mode: str) -> Rule | None:
        err = self.err
        # Name the rule in errors about its own keys too, when its id can be read.
        peek = [v.value for k, v in getattr(node, "value", ()) if isinstance(node, yaml.MappingNode)
                and getattr(k, "value", None) == "id" and isinstance(v, yaml.ScalarNode)]
        m = mapping(node, err, f"rule #{index + 1}", str(peek[0]) if peek else None)
        if m is None:
            return None
        rid = None
        if "id" in m:
            rid = scalar_text(m["id"][1], err, "'id'")
            if rid is not None and not _RULE_ID.match(rid):
                err.add(node_line(m["id"][1]), f"rule id '{rid}' must start with a letter and hold only "
                                           "letters, digits, '_', '.', '-' (at most 64)")
        else:
            err.add(node_line(node), f"rule #{index + 1} has no 'id'")
        label = rid or f"#{index + 1}"
        unknown_keys(m, _RULE_KEYS, err, "a rule", label)
        ok = True

        def required(key: str) -> yaml.Node | None:
            nonlocal ok
            if key not in m:
                err.add(node_line(node), f"missing '{key}'", label)
                ok = False
                return None
            return m[key][1]

        version = 0
        vnode = required("version")
        if vnode is not None:
            v = plain(vnode) if isinstance(vnode, yaml.ScalarNode) else None
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                err.add(node_line(vnode), "'version' must be a whole number >= 1 (bump it on every change)", label)
                ok = False
            else:
                version = v
        description = ""
        dnode = required("description")
        if dnode is not None:
            description = (scalar_text(dnode, err, "'description'", label) or "").strip()
            if not description:
                err.add(node_line(dnode), "'description' must say what the rule catches and why", label)
                ok = False

        action, params = self.action(m, node, label)
        ok = ok and action is not None
        reason = None
        rnode = required("reason")
        if rnode is not None:
            reason = self.reason(rnode, label)
            ok = ok and reason is not None

        severity = "medium"
        if "severity" in m:
            severity = self.choice(m["severity"][1], SEVERITIES, "severity", label) or severity
        mode = "active"
        if "mode" in m:
            mode = self.choice(m["mode"][1], MODES, "mode", label) or mode
        if set_mode == "shadow":
            mode = "shadow"
        enabled = True
        if "enabled" in m:
            e = plain(m["enabled"][1]) if isinstance(m["enabled"][1], yaml.ScalarNode) else None
            if not isinstance(e, bool):
                err.add(node_line(m["enabled"][1]), "'enabled' must be true or false", label)
            else:
                enabled = e

        when = None
        wnode = required("when")
        if wnode is not None:
            when = self.condition(wnode, label)
            ok = ok and when is not None
        # Check what did parse even when something else is wrong: all errors in one go.
        if when is not None:
            self.check_types(when, label)
        if self.available is not None:
            refs = expr_columns_with_lines(when) if when is not None else []
            if reason is not None:
                refs += [(c, reason.line) for c in sorted(reason.columns())]
            self.err.items += _column_errors(refs, self.available, self.source, label)
        if rid is not None:
            if rid in self.rule_lines:
                err.add(node_line(node), f"duplicate rule id (first defined at line {self.rule_lines[rid]})", rid)
                return None
            self.rule_lines[rid] = node_line(node)
        if not ok or rid is None or when is None or reason is None or action is None:
            return None
        return Rule(id=rid, version=version, description=description, action=action, reason=reason,
                    when=when, action_params=params, severity=severity, mode=mode, enabled=enabled,
                    line=node_line(node))

    def choice(self, node: yaml.Node, choices: Sequence[str], what: str, rule: str) -> str | None:
        value = scalar_text(node, self.err, f"'{what}'", rule)
        if value is None:
            return None
        if value not in choices:
            self.err.add(node_line(node), f"unknown {what} '{value}'{did_you_mean(value, choices)} "
                                      f"(use one of {', '.join(choices)})", rule)
            return None
        return value

    def action(self, m: dict, node: yaml.Node, rule: str) -> tuple[str | None, dict[str, float]]:
        if "action" not in m:
            self.err.add(node_line(node), "missing 'action'", rule)
            return None, {}
        action = self.choice(m["action"][1], self.actions, "action", rule)
        params: dict[str, float] = {}
        spec = ACTION_PARAMS.get(action or "", {})
        if "params" in m:
            pnode = m["params"][1]
            if action is not None and not spec:
                self.err.add(node_line(pnode), f"action '{action}' takes no params "
                                           f"(only {', '.join(ACTION_PARAMS)} do)", rule)
            pm = mapping(pnode, self.err, "'params'", rule)
            if pm is not None and spec:
                unknown_keys(pm, tuple(spec), self.err, f"params of '{action}'", rule)
                for name, (_, vnode) in pm.items():
                    if name not in spec:
                        continue
                    v = plain(vnode) if isinstance(vnode, yaml.ScalarNode) else None
                    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                        self.err.add(node_line(vnode), f"param '{name}' must be a number >= 0", rule)
                    else:
                        params[name] = float(v)
        for name, (needed, default) in spec.items():
            if name not in params:
                if needed:
                    self.err.add(node_line(m["action"][1]), f"action '{action}' needs params: {{{name}: ...}}", rule)
                    return None, {}
                params[name] = default
        return action, params

    def reason(self, node: yaml.Node, rule: str) -> ReasonTemplate | None:
        m = mapping(node, self.err, "'reason' (write {code: CODE, text: \"...\"})", rule)
        if m is None:
            return None
        unknown_keys(m, ("code", "text"), self.err, "'reason'", rule)
        if "code" not in m or "text" not in m:
            self.err.add(node_line(node), "'reason' needs both 'code' and 'text'", rule)
            return None
        code = scalar_text(m["code"][1], self.err, "reason 'code'", rule)
        text = scalar_text(m["text"][1], self.err, "reason 'text'", rule)
        if code is None or text is None:
            return None
        if not _REASON_CODE.match(code):
            self.err.add(node_line(m["code"][1]), f"reason code '{code}' must be UPPER_SNAKE_CASE", rule)
            return None
        try:
            raw = list(string.Formatter().parse(text))
        except ValueError as exc:
            self.err.add(node_line(m["text"][1]), f"reason text: {exc} (write {{{{ and }}}} for braces)", rule)
            return None
        parts = []
        for literal, fname, spec, conversion in raw:
            if fname is None:
                parts.append((literal, None, ""))
                continue
            if not _IDENT.match(fname) or conversion:
                self.err.add(node_line(m["text"][1]), f"reason text field '{{{fname}}}' must be a plain "
                                                  "column name, e.g. {amount} or {amount:.2f}", rule)
                return None
            try:
                format(1.5, spec or "")
            except ValueError:
                self.err.add(node_line(m["text"][1]), f"reason text field '{{{fname}:{spec}}}' has a bad "
                                                  "number format", rule)
                return None
            parts.append((literal, fname, spec or ""))
        return ReasonTemplate(code, text, tuple(parts), node_line(m["text"][1]))

    # -- conditions ------------------------------------------------------------
    def condition(self, node: yaml.Node, rule: str) -> Condition | None:
        if isinstance(node, yaml.ScalarNode):
            text = scalar_text(node, self.err, "a condition", rule)
            if text is None:
                return None
            line_of = string_line_of(node)
            try:
                return _Parser(text, line_of).parse()
            except ConditionSyntaxError as exc:
                self.err.add(line_of(exc.pos), f"{exc} in \"{text.strip()}\"", rule)
                return None
        if isinstance(node, yaml.SequenceNode):
            self.err.add(node_line(node), "a list of conditions needs 'all:' or 'any:' in front", rule)
            return None
        m = mapping(node, self.err, "a condition", rule)
        if m is None:
            return None
        line = node_line(node)
        kinds = [k for k in ("all", "any", "not", "feature") if k in m]
        if len(kinds) != 1:
            self.err.add(line, "a condition needs exactly one of 'all', 'any', 'not', 'feature' "
                               "or a condition string", rule)
            return None
        kind = kinds[0]
        if kind in ("all", "any"):
            unknown_keys(m, (kind,), self.err, f"'{kind}'", rule)
            seq = m[kind][1]
            if not isinstance(seq, yaml.SequenceNode) or not seq.value:
                self.err.add(node_line(seq), f"'{kind}' needs a non-empty list of conditions", rule)
                return None
            children = [self.condition(c, rule) for c in seq.value]
            if any(c is None for c in children):
                return None
            return (All if kind == "all" else AnyOf)(tuple(children), line)  # type: ignore[arg-type]
        if kind == "not":
            unknown_keys(m, ("not",), self.err, "'not'", rule)
            child = self.condition(m["not"][1], rule)
            return None if child is None else Not(child, line)
        return self.structured(m, line, rule)

    def structured(self, m: dict, line: int, rule: str) -> Condition | None:
        err = self.err
        unknown_keys(m, ("feature", "op", "value", "list"), err, "a comparison", rule)
        feature = scalar_text(m["feature"][1], err, "'feature'", rule)
        if "op" not in m:
            err.add(line, "a comparison needs 'op'", rule)
            return None
        opnode = m["op"][1]
        op = scalar_text(opnode, err, "'op'", rule)
        if feature is None or op is None:
            return None
        fline = node_line(m["feature"][1])
        if op not in STRUCTURED_OPS:
            err.add(node_line(opnode), f"unknown operator '{op}' (use one of {', '.join(STRUCTURED_OPS)})", rule)
            return None
        if op in ("in_list", "not_in_list"):
            if "list" not in m:
                err.add(line, f"'{op}' needs 'list: NAME'", rule)
                return None
            name = scalar_text(m["list"][1], err, "'list'", rule)
            return None if name is None else InList(feature, list_name=name, negate=op == "not_in_list", line=fline)
        if "value" not in m:
            err.add(line, f"'{op}' needs 'value'", rule)
            return None
        vnode = m["value"][1]
        if op == "between":
            if not isinstance(vnode, yaml.SequenceNode) or len(vnode.value) != 2:
                err.add(node_line(vnode), "'between' needs value: [LOW, HIGH]", rule)
                return None
            low, high = (self.operand(v, rule) for v in vnode.value)
            if low is None or high is None:
                return None
            return Between(Col(feature, fline), low, high, fline)
        if feature in self.text_columns and isinstance(vnode, yaml.ScalarNode) and op in ("==", "!="):
            return InList(feature, literal=str(vnode.value), negate=op == "!=", line=fline)
        right = self.operand(vnode, rule)
        return None if right is None else Compare(op, Col(feature, fline), right, fline)

    def operand(self, node: yaml.Node, rule: str) -> Expr | None:
        """A number, or an arithmetic expression string such as '5 * card_amount_mean_30d'."""
        if not isinstance(node, yaml.ScalarNode):
            self.err.add(node_line(node), "a value must be a number or an expression", rule)
            return None
        value = plain(node)
        if isinstance(value, bool) or value is None:
            self.err.add(node_line(node), f"a value must be a number or an expression, got {node.value!r}", rule)
            return None
        if isinstance(value, (int, float)):
            if value != value or value in (float("inf"), float("-inf")):
                self.err.add(node_line(node), "a value must be a finite number", rule)
                return None
            return Num(float(value), node_line(node))
        line_of = string_line_of(node)
        try:
            return parse_expression(str(value), line_of(0))
        except ConditionSyntaxError as exc:
            self.err.add(line_of(exc.pos), f"{exc} in \"{value}\"", rule)
            return None

    def check_types(self, when: Condition, rule: str) -> None:
        """Text columns only with lists and text literals; numbers only with arithmetic."""
        for node in walk(when):
            if isinstance(node, InList):
                if node.column not in self.text_columns:
                    how = "in/not in a list" if node.list_name else "== / != with text"
                    self.err.add(node.line, f"'{node.column}' is not a text column, so it cannot be used "
                                            f"with {how} (text columns: {', '.join(sorted(self.text_columns))})", rule)
                if node.list_name is not None and node.list_name not in self.lists:
                    known = sorted(self.lists)
                    if node.list_name not in self.list_lines:  # unreadable lists already reported
                        self.err.add(node.line, f"unknown list '{node.list_name}'"
                                                f"{did_you_mean(node.list_name, known)} "
                                                f"(lists: {', '.join(known) or 'none defined'})", rule)
            elif isinstance(node, (Compare, Between)):
                for name, line in expr_columns_with_lines(node):
                    if name in self.text_columns:
                        self.err.add(line, f"'{name}' is a text column: compare it with == 'value', "
                                           "!= 'value', in LIST or not in LIST", rule)


def _column_errors(refs: Iterable[tuple[str, int]], available: set[str], source: str, rule: str) -> list[str]:
    errors = Errors(source)
    seen: set[tuple[str, int]] = set()
    for name, line in refs:
        if name in available or (name, line) in seen:
            continue
        seen.add((name, line))
        errors.add(line, f"unknown column '{name}'{did_you_mean(name, available)}", rule)
    return errors.items


def _error_line(message: str) -> int:
    m = re.match(r"^.*?:(\d+):", message)
    return int(m.group(1)) if m else 0


def check_columns(rule_set: RuleSet, available: Iterable[str]) -> list[str]:
    """Errors for every column a rule names that the batch will not have."""
    available = set(available)
    errors: list[str] = []
    for rule in rule_set.enabled_rules:
        refs = expr_columns_with_lines(rule.when)
        refs += [(c, rule.reason.line or rule.line) for c in sorted(rule.reason.columns())]
        errors += _column_errors(refs, available, rule_set.source_name, rule.id)
    return errors


def validate_rule_set(
    text: str,
    source_name: str = "<rules>",
    *,
    available_columns: Iterable[str] | None = None,
    list_files: Mapping[str, str] | None = None,
    base_dir: str | Path | None = None,
    text_columns: frozenset[str] = STRING_COLUMNS,
    extra_keys: tuple[str, ...] = (),
    actions: tuple[str, ...] = ACTIONS,
) -> RuleSet:
    """Parse and check a rule set; raise :class:`RuleSetError` with every problem found.

    ``list_files`` maps ``file:`` paths to their content (a published rule set carries its
    list files this way); other paths are read relative to ``base_dir``. With
    ``available_columns`` the column names are checked too (the compiler always checks).
    ``text_columns``: the batch's text columns (a transaction batch's by default);
    ``extra_keys``: top-level sections a file that embeds a rule set adds (checked by its reader);
    ``actions``: the actions its rules may take.
    """
    err = Errors(source_name)
    root = compose(text, source_name, RuleSetError)
    if root is None:
        raise RuleSetError([f"{source_name}:1: empty rule set (needs 'version' and 'rules')"])
    top = mapping(root, err, "the rule set")
    if top is None:
        raise RuleSetError(err.items)
    unknown_keys(top, _TOP_KEYS + extra_keys, err, "the rule set")
    validator = _Validator(source_name, err, list_files, Path(base_dir) if base_dir else None,
                           None if available_columns is None else set(available_columns), text_columns, actions)

    version = ""
    if "version" not in top:
        err.add(node_line(root), "missing 'version' (e.g. version: \"2024.06.1\")")
    else:
        version = scalar_text(top["version"][1], err, "'version'") or ""
        if version and not re.match(r"^[A-Za-z0-9_.+-]{1,40}$", version):
            err.add(node_line(top["version"][1]), "'version' must be short: letters, digits, '.', '_', '+', '-'")
    set_mode = "active"
    if "mode" in top:
        set_mode = validator.choice(top["mode"][1], MODES, "mode", None) or set_mode  # type: ignore[arg-type]
    description = ""
    if "description" in top:
        description = scalar_text(top["description"][1], err, "'description'") or ""
    if "lists" in top:
        validator.lists_node(top["lists"][1])

    rules: list[Rule] = []
    if "rules" not in top:
        err.add(node_line(root), "missing 'rules'")
    else:
        rnode = top["rules"][1]
        if not isinstance(rnode, yaml.SequenceNode) or not rnode.value:
            err.add(node_line(rnode), "'rules' must be a non-empty list of rules")
        elif len(rnode.value) > MAX_RULES:
            err.add(node_line(rnode), f"{len(rnode.value):,} rules, at most {MAX_RULES:,} in one set")
        else:
            for i, item in enumerate(rnode.value):
                rule = validator.rule(item, i, set_mode)
                if rule is not None:
                    rules.append(rule)

    if err.items:
        raise RuleSetError(sorted(err.items, key=_error_line))
    data = yaml.safe_load(text)
    # Inline list files so that the hash covers what the rules really match against.
    for name, spec in (data.get("lists") or {}).items():
        if isinstance(spec, dict) and "file" in spec:
            data["lists"][name] = {"file": spec["file"], "values": validator.resolved_files.get(str(spec["file"]), [])}
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    rule_set = RuleSet(version=version, rules=tuple(rules), lists=validator.lists, source_name=source_name,
                       text=text, canonical=canonical, mode=set_mode, description=description,
                       list_lines=validator.list_lines, text_columns=text_columns)
    return rule_set


def default_rule_set_text() -> str:
    """The built-in rule set shipped as ``rules/default.yaml``."""
    return (Path(__file__).with_name("default.yaml")).read_text()
