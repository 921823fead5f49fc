"""YAML read for validation: every value with its line, errors gathered rather than raised.

The rule language and the limits files both read YAML node trees (``yaml.compose``), not
plain values, so that every error can name its line, and report every problem at once.
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable, Sequence

import yaml


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Errors:
    """Problems found in one file, each as ``file:line: <noun> 'id': message``."""

    def __init__(self, source: str, noun: str = "rule"):
        self.source = source
        self.noun = noun
        self.items: list[str] = []

    def add(self, line: int, message: str, rule: str | None = None) -> None:
        where = f"{self.source}:{line}:"
        who = f" {self.noun} '{rule}':" if rule else ""
        self.items.append(f"{where}{who} {message}")


def compose(text: str, source: str, error: type[Exception]) -> yaml.Node | None:
    """The node tree of ``text`` (None when empty); a syntax error raises ``error`` with one
    ``source:line: not valid YAML: ...`` message."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise error([f"{source}:{mark.line + 1 if mark else 1}: not valid YAML: "
                     f"{getattr(exc, 'problem', None) or exc}"]) from None


def line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def plain(node: yaml.Node) -> Any:
    """The Python value of a node (safe constructors only)."""
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(node)
    finally:
        loader.dispose()


def mapping(node: yaml.Node, err: Errors, what: str, rule: str | None = None) -> dict[str, tuple[yaml.Node, yaml.Node]] | None:
    if not isinstance(node, yaml.MappingNode):
        err.add(line(node), f"{what} must be a mapping", rule)
        return None
    out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key, value in node.value:
        name = str(key.value)
        if name in out:
            # PyYAML would silently keep the last one; a fraud rule must not change by accident.
            err.add(line(key), f"duplicate key '{name}' in {what}", rule)
        out[name] = (key, value)
    return out


def unknown_keys(m: dict[str, tuple[yaml.Node, yaml.Node]], allowed: Sequence[str], err: Errors,
                  what: str, rule: str | None = None) -> None:
    for name, (key, _) in m.items():
        if name not in allowed:
            err.add(line(key), f"unknown key '{name}' in {what}{did_you_mean(name, allowed)}; "
                                f"allowed: {', '.join(allowed)}", rule)


def scalar_text(node: yaml.Node, err: Errors, what: str, rule: str | None = None) -> str | None:
    if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:null":
        err.add(line(node), f"{what} must be a text value", rule)
        return None
    return str(node.value)


def string_line_of(node: yaml.ScalarNode) -> Any:
    """Map a char offset in a scalar's value to its file line. Exact for plain, quoted and
    literal (``|``) scalars; folded (``>``) scalars point at their first line."""
    first = line(node) + (1 if node.style in ("|", ">") else 0)
    text = str(node.value)
    if node.style == ">":
        return lambda pos: first
    if node.style in ("|",):
        return lambda pos: first + text.count("\n", 0, pos)
    # Plain and quoted multi-line scalars fold newlines into spaces: use the first line.
    return lambda pos: first
