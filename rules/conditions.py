"""Condition trees of the rule language and the small parser of their string form.

A rule's ``when`` is a tree of comparisons (``Compare``, ``Between``, ``InList``) joined by
``All``, ``AnyOf`` and ``Not``, over expressions (``Num``, ``Col``, ``Arith``). The string
form (``card_txn_count_1h >= 5 and amount < 5``) is tokenized and parsed here, never by
Python ``eval``. Every node keeps its line, so errors point into the YAML file.

>>> parse_condition("amount between 10 and 20 or not (country in deny)").to_text()
'((amount between 10.0 and 20.0) or (not (country in deny)))'
"""

from __future__ import annotations
import json
import re
from dataclasses import dataclass
from typing import Any, Iterable


COMPARISON_OPS = (">", ">=", "<", "<=", "==", "!=")
# A condition is data from whoever publishes rules: bounded, so that no file can exhaust the
# parser's stack or the compiler (a person writes a handful of levels and tokens).
MAX_NESTING = 32
MAX_TOKENS = 2000


ARITH_OPS = ("+", "-", "*", "/")


# ======================================================================================
# Condition trees
# ======================================================================================
# Expressions (numeric)
@dataclass(frozen=True)
class Num:
    value: float
    line: int = 0

    def to_text(self) -> str:
        return repr(float(self.value))

    def columns(self) -> set[str]:
        return set()


@dataclass(frozen=True)
class Col:
    name: str
    line: int = 0

    def to_text(self) -> str:
        return self.name

    def columns(self) -> set[str]:
        return {self.name}


@dataclass(frozen=True)
class _Binary:
    op: str
    left: "Expr"
    right: "Expr"
    line: int = 0

    def to_text(self) -> str:
        return f"({self.left.to_text()} {self.op} {self.right.to_text()})"

    def columns(self) -> set[str]:
        return self.left.columns() | self.right.columns()


class Arith(_Binary):
    """An arithmetic expression; ``op`` is one of ``ARITH_OPS``."""


# Conditions (boolean)
class Compare(_Binary):
    """A comparison of two expressions; ``op`` is one of ``COMPARISON_OPS``."""


@dataclass(frozen=True)
class Between:
    """Inclusive at both ends."""

    expr: Expr
    low: Expr
    high: Expr
    line: int = 0

    def to_text(self) -> str:
        return f"({self.expr.to_text()} between {self.low.to_text()} and {self.high.to_text()})"

    def columns(self) -> set[str]:
        return self.expr.columns() | self.low.columns() | self.high.columns()


@dataclass(frozen=True)
class InList:
    """Membership of a text column in a named list, or equality with one literal text
    (``channel == 'pos'`` is a one-value list)."""

    column: str
    list_name: str | None = None
    literal: str | None = None
    negate: bool = False
    line: int = 0

    def to_text(self) -> str:
        if self.list_name is not None:
            return f"({self.column} {'not in' if self.negate else 'in'} {self.list_name})"
        return f"({self.column} {'!=' if self.negate else '=='} {json.dumps(self.literal)})"

    def columns(self) -> set[str]:
        return {self.column}


@dataclass(frozen=True)
class _Junction:
    children: tuple["Condition", ...]
    line: int = 0
    word = ""  # "and" / "or" (a class attribute, not a field)

    def to_text(self) -> str:
        return "(" + f" {self.word} ".join(c.to_text() for c in self.children) + ")"

    def columns(self) -> set[str]:
        return set().union(*(c.columns() for c in self.children))


class All(_Junction):
    word = "and"


class AnyOf(_Junction):
    word = "or"


@dataclass(frozen=True)
class Not:
    child: "Condition"
    line: int = 0

    def to_text(self) -> str:
        return f"(not {self.child.to_text()})"

    def columns(self) -> set[str]:
        return self.child.columns()


def walk(node: Condition) -> Iterable[Condition]:
    yield node
    if isinstance(node, (All, AnyOf)):
        for child in node.children:
            yield from walk(child)
    elif isinstance(node, Not):
        yield from walk(node.child)


def expr_columns_with_lines(node: Condition | Expr) -> list[tuple[str, int]]:
    """Every column reference with the line it was written on (for error messages)."""
    out: list[tuple[str, int]] = []

    def visit(n: Any) -> None:
        if isinstance(n, Col):
            out.append((n.name, n.line))
        elif isinstance(n, Arith):
            visit(n.left), visit(n.right)
        elif isinstance(n, Compare):
            visit(n.left), visit(n.right)
        elif isinstance(n, Between):
            visit(n.expr), visit(n.low), visit(n.high)
        elif isinstance(n, InList):
            out.append((n.column, n.line))
        elif isinstance(n, (All, AnyOf)):
            for c in n.children:
                visit(c)
        elif isinstance(n, Not):
            visit(n.child)

    visit(node)
    return out


# ======================================================================================
# Compact condition strings: tokenizer and recursive-descent parser
# ======================================================================================
class ConditionSyntaxError(ValueError):
    def __init__(self, message: str, pos: int):
        super().__init__(message)
        self.pos = pos


@dataclass(frozen=True)
class _Tok:
    kind: str  # num, name, str, op, arith, lparen, rparen, kw, end
    text: str
    pos: int


_KEYWORDS = {"and", "or", "not", "in", "between"}


_NUMBER = re.compile(r"(\d[\d_]*\.?[\d_]*|\.\d[\d_]*)([eE][+-]?\d+)?")


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


_OP_CHARS = "<>=!"


_OPS_HELP = "use one of " + ", ".join(COMPARISON_OPS)


def tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch.isdigit() or (ch == "." and i + 1 < n and text[i + 1].isdigit()):
            m = _NUMBER.match(text, i)
            assert m is not None
            toks.append(_Tok("num", m.group(0), i))
            i = m.end()
        elif ch.isalpha() or ch == "_":
            m = _NAME.match(text, i)
            assert m is not None
            word = m.group(0)
            toks.append(_Tok("kw" if word in _KEYWORDS else "name", word, i))
            i = m.end()
        elif ch in "'\"":
            end = text.find(ch, i + 1)
            if end < 0:
                raise ConditionSyntaxError("unterminated text literal", i)
            toks.append(_Tok("str", text[i + 1:end], i))
            i = end + 1
        elif ch in _OP_CHARS:
            j = i
            while j < n and text[j] in _OP_CHARS:
                j += 1
            op = text[i:j]
            if op not in COMPARISON_OPS:
                raise ConditionSyntaxError(f"unknown operator '{op}' ({_OPS_HELP})", i)
            toks.append(_Tok("op", op, i))
            i = j
        elif ch in "+-*/":
            toks.append(_Tok("arith", ch, i))
            i += 1
        elif ch == "(":
            toks.append(_Tok("lparen", ch, i))
            i += 1
        elif ch == ")":
            toks.append(_Tok("rparen", ch, i))
            i += 1
        elif ch == "&" or ch == "|":
            word = "and" if ch == "&" else "or"
            raise ConditionSyntaxError(f"unexpected '{ch}' (write '{word}')", i)
        else:
            raise ConditionSyntaxError(f"unexpected character {ch!r}", i)
    toks.append(_Tok("end", "", n))
    return toks


class _Parser:
    """Grammar (lowest precedence first)::

        condition := conj ('or' conj)*
        conj      := unary ('and' unary)*
        unary     := 'not' unary | '(' condition ')' | predicate
        predicate := arith ( CMP (arith | TEXT) | 'between' arith 'and' arith
                           | 'in' LIST | 'not' 'in' LIST )
        arith     := term (('+' | '-') term)*
        term      := factor (('*' | '/') factor)*
        factor    := NUMBER | COLUMN | '-' factor | '(' arith ')'
    """

    def __init__(self, text: str, line_of: Any):
        self.text = text
        self.toks = tokenize(text)
        if len(self.toks) > MAX_TOKENS:
            raise ConditionSyntaxError(f"condition too long: {len(self.toks)} tokens, at most {MAX_TOKENS}",
                                       self.toks[MAX_TOKENS].pos)
        self.i = 0
        self.depth = 0
        self.line_of = line_of  # char offset -> file line

    # -- helpers ---------------------------------------------------------------
    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def at(self, kind: str, text: str | None = None) -> bool:
        t = self.tok
        return t.kind == kind and (text is None or t.text == text)

    def expect(self, kind: str, text: str | None, what: str) -> _Tok:
        if not self.at(kind, text):
            self.fail(f"expected {what}")
        return self.take()

    def fail(self, message: str) -> None:
        t = self.tok
        got = "end of condition" if t.kind == "end" else f"'{t.text}'"
        raise ConditionSyntaxError(f"{message}, got {got}", t.pos)

    # -- grammar ---------------------------------------------------------------
    def parse(self) -> Condition:
        cond = self.condition()
        if not self.at("end"):
            self.fail("expected 'and', 'or' or the end of the condition")
        return cond

    def condition(self) -> Condition:
        line = self.line_of(self.tok.pos)
        parts = [self.conj()]
        while self.at("kw", "or"):
            self.take()
            parts.append(self.conj())
        return parts[0] if len(parts) == 1 else AnyOf(tuple(parts), line)

    def conj(self) -> Condition:
        line = self.line_of(self.tok.pos)
        parts = [self.unary()]
        while self.at("kw", "and"):
            self.take()
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else All(tuple(parts), line)

    def deeper(self, parse):
        """``parse()`` one level deeper (a 'not', a '(' or a unary '-'); past MAX_NESTING the
        condition is refused."""
        self.depth += 1
        try:
            if self.depth > MAX_NESTING:
                raise ConditionSyntaxError(f"condition nested more than {MAX_NESTING} levels deep", self.tok.pos)
            return parse()
        finally:
            self.depth -= 1

    def unary(self) -> Condition:
        return self.deeper(self._unary)

    def _unary(self) -> Condition:
        if self.at("kw", "not"):
            line = self.line_of(self.take().pos)
            return Not(self.unary(), line)
        if self.at("lparen"):
            # '(' opens either a grouped condition or an arithmetic expression such as
            # '(amount - 5) > 3': try the predicate first, then the group, and report the
            # attempt that got further.
            start = self.i
            try:
                return self.predicate()
            except ConditionSyntaxError as as_predicate:
                self.i = start
                self.take()
                try:
                    cond = self.condition()
                    self.expect("rparen", None, "')'")
                    return cond
                except ConditionSyntaxError as as_group:
                    raise max(as_predicate, as_group, key=lambda e: e.pos) from None
        return self.predicate()

    def predicate(self) -> Condition:
        first = self.tok
        line = self.line_of(first.pos)
        left = self.arith()
        t = self.tok
        if t.kind == "op":
            self.take()
            if self.at("str"):
                literal = self.take().text
                if t.text not in ("==", "!=") or not isinstance(left, Col):
                    raise ConditionSyntaxError(
                        f"text can only be compared to a column with == or != (got '{t.text}')", t.pos)
                return InList(left.name, literal=literal, negate=t.text == "!=", line=line)
            return Compare(t.text, left, self.arith(), line)
        if t.kind == "kw" and t.text == "between":
            self.take()
            low = self.arith()
            self.expect("kw", "and", "'and' in 'between LOW and HIGH'")
            return Between(left, low, self.arith(), line)
        if t.kind == "kw" and t.text in ("in", "not"):
            negate = self.take().text == "not"
            if negate:
                self.expect("kw", "in", "'in' after 'not'")
            name = self.expect("name", None, "a list name after 'in'")
            if not isinstance(left, Col):
                raise ConditionSyntaxError("only a column can be looked up in a list", first.pos)
            return InList(left.name, list_name=name.text, negate=negate, line=line)
        if isinstance(left, Col):
            self.fail(f"expected a comparison after '{left.name}' (e.g. {left.name} == 1)")
        self.fail(f"expected a comparison operator ({_OPS_HELP}), 'between' or 'in'")
        raise AssertionError  # unreachable

    def arith(self) -> Expr:
        node = self.term()
        while self.at("arith", "+") or self.at("arith", "-"):
            t = self.take()
            node = Arith(t.text, node, self.term(), self.line_of(t.pos))
        return node

    def term(self) -> Expr:
        node = self.factor()
        while self.at("arith", "*") or self.at("arith", "/"):
            t = self.take()
            node = Arith(t.text, node, self.factor(), self.line_of(t.pos))
        return node

    def factor(self) -> Expr:
        return self.deeper(self._factor)

    def _factor(self) -> Expr:
        t = self.tok
        line = self.line_of(t.pos)
        if t.kind == "num":
            self.take()
            return Num(_to_float(t.text, t.pos), line)
        if t.kind == "name":
            self.take()
            return Col(t.text, line)
        if t.kind == "arith" and t.text == "-":
            self.take()
            inner = self.factor()
            if isinstance(inner, Num):
                return Num(-inner.value, line)
            return Arith("-", Num(0.0, line), inner, line)
        if t.kind == "lparen":
            self.take()
            node = self.arith()
            self.expect("rparen", None, "')'")
            return node
        self.fail("expected a number, a column or '('")
        raise AssertionError  # unreachable


def _to_float(text: str, pos: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConditionSyntaxError(f"bad number '{text}'", pos) from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ConditionSyntaxError(f"number '{text}' is not finite", pos)
    return value


def parse_condition(text: str, first_line: int = 1) -> Condition:
    """Parse a compact condition string.

    >>> parse_condition("amount > 5 * card_amount_mean_30d or country in deny").to_text()
    '((amount > (5.0 * card_amount_mean_30d)) or (country in deny))'
    """

    def line_of(pos: int) -> int:
        return first_line + text.count("\n", 0, pos)

    return _Parser(text, line_of).parse()


def parse_expression(text: str, first_line: int = 1) -> Expr:
    """Parse an arithmetic expression string such as ``5 * card_amount_mean_30d``."""
    parser = _Parser(text, lambda pos: first_line + text.count("\n", 0, pos))
    expr = parser.arith()
    if not parser.at("end"):
        parser.fail("expected the end of the expression")
    return expr


Expr = Num | Col | Arith


Condition = Compare | Between | InList | All | AnyOf | Not
