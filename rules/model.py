"""What a rule set is: actions, severities, the columns rules may name, rules with their
reason templates, and the errors a rule set can have. ``rules.language`` reads YAML into
these; ``rules.compiler`` compiles them."""

from __future__ import annotations
import hashlib
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence
from riskstream.rules.conditions import Condition


ACTIONS = ("decline", "review", "step_up", "allow", "block_card", "cut_limit")


# Parameters of the limit-control actions the worker turns into Redis limit entries.
ACTION_PARAMS: dict[str, dict[str, tuple[bool, float]]] = {
    # name: (required, default)
    "block_card": {"hours": (False, 24.0)},
    "cut_limit": {"limit": (True, 0.0), "hours": (False, 24.0)},
}


SEVERITIES = ("low", "medium", "high", "critical")


MODES = ("active", "shadow")


# Text columns of a transaction batch (numpy object arrays, "" when absent).
STRING_COLUMNS = frozenset({
    "card_id", "merchant_id", "terminal_id", "device_id", "ip", "country", "currency",
    "channel", "mcc", "account_id", "customer_id",
})


# The numeric features known today; `rules validate` checks against these (plus text columns)
# unless told otherwise. The worker compiles against the columns it really has.
KNOWN_NUMERIC_COLUMNS = frozenset({
    "amount", "card_txn_count_1h", "card_amount_sum_1d", "card_amount_zscore_30d",
    "card_amount_ratio_30d", "card_amount_mean_30d", "card_seconds_since_prev", "card_first_seen",
    "card_distinct_merchants_1d", "card_new_country", "card_new_device", "card_speed_kmh_from_prev",
    "merchant_txn_count_1h", "merchant_fraud_rate_7d", "terminal_fraud_rate_7d", "hour_of_day",
    "is_night", "is_weekend", "score",
})


KNOWN_COLUMNS = KNOWN_NUMERIC_COLUMNS | STRING_COLUMNS


# ======================================================================================
# Errors
# ======================================================================================
class RuleSetError(Exception):
    """Every problem found in a rule set, each as ``file:line: rule 'id': message``."""

    def __init__(self, errors: Sequence[str]):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


# ======================================================================================
# Rules and rule sets
# ======================================================================================
@dataclass(frozen=True)
class ReasonTemplate:
    """A reason code and a human text with ``{column}`` or ``{column:.2f}`` fields.

    Rendered by our own loop over ``string.Formatter().parse`` so that a template can only
    read plain columns of the row (``str.format`` would allow ``{x.__class__}`` tricks)."""

    code: str
    text: str
    parts: tuple[tuple[str, str | None, str], ...] = ()  # (literal, column or None, spec)
    line: int = 0

    def columns(self) -> set[str]:
        return {c for _, c, _ in self.parts if c}

    def render(self, value_of: Any) -> str:
        out = []
        for literal, column, spec in self.parts:
            out.append(literal)
            if column is not None:
                out.append(format_value(value_of(column), spec))
        return "".join(out)


def format_value(value: Any, spec: str = "") -> str:
    if isinstance(value, str):
        return value
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if x != x:
        return "n/a"
    if spec:
        return format(x, spec)
    if x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.2f}" if abs(x) >= 1 else f"{x:.4g}"


@dataclass(frozen=True)
class Rule:
    id: str
    version: int
    description: str
    action: str
    reason: ReasonTemplate
    when: Condition
    action_params: Mapping[str, float] = field(default_factory=dict)
    severity: str = "medium"
    mode: str = "active"
    enabled: bool = True
    line: int = 0

    @property
    def shadow(self) -> bool:
        return self.mode == "shadow"


@dataclass(frozen=True)
class RuleSet:
    version: str
    rules: tuple[Rule, ...]
    lists: Mapping[str, frozenset[str]]
    source_name: str
    text: str
    canonical: str  # sorted-key JSON of the set, list files inlined: what the hash covers
    mode: str = "active"
    description: str = ""
    list_lines: Mapping[str, int] = field(default_factory=dict)
    text_columns: frozenset[str] = STRING_COLUMNS  # the batch's text columns (loan rules have their own)

    @property
    def version_tag(self) -> str:
        """What decisions record: ``version#sha256(canonical)[:8]``. Comments and layout do
        not change it; any change of meaning (including a list file's content) does."""
        return f"{self.version}#{hashlib.sha256(self.canonical.encode()).hexdigest()[:8]}"

    @property
    def enabled_rules(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.enabled)

    def summary(self) -> str:
        enabled = self.enabled_rules
        shadow = sum(1 for r in enabled if r.shadow)
        disabled = len(self.rules) - len(enabled)
        parts = [f"{len(enabled)} rules ({shadow} shadow" + (f", {disabled} disabled)" if disabled else ")"),
                 f"{len(self.lists)} lists ({sum(len(v) for v in self.lists.values())} values)"]
        mode = " [whole set in shadow mode]" if self.mode == "shadow" else ""
        return f"{self.source_name}: rule set {self.version_tag}: " + ", ".join(parts) + mode
