"""Audit and maker-checker, as an operator uses them: `riskstream rules publish|pending|approve|
reject` against the embedded stack, and the rows they leave in the ``audit`` table."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import query, wait_for

pytestmark = pytest.mark.integration

RULES = """\
version: "{version}"
rules:
  - id: big_amount
    version: 1
    description: A large amount.
    action: review
    reason: {{code: BIG, text: "amount {{amount}}"}}
    when: amount >= {limit}
"""


def _v(version: str) -> str:
    return version.split("#")[0]  # the version a rule set names, without its content tag


def _cli(settings, *args: str, approval: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, RISKSTREAM_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
               RISKSTREAM_DATA_DIR=str(settings.data_dir),
               RISKSTREAM_REQUIRE_APPROVAL="true" if approval else "false")
    return subprocess.run([sys.executable, "-m", "riskstream", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_a_change_waits_for_a_second_person_and_every_step_is_audited(stack, tmp_path):
    from riskstream.rules.publishing import rule_history

    from riskstream.rules.publishing import ApprovalError, decide_change, pending_changes, publish_rule_set

    publish_rule_set(stack, RULES.format(version="1", limit=500), "v1.yaml", who="alice")
    second = tmp_path / "v2.yaml"
    second.write_text(RULES.format(version="2", limit=300))

    proposed = _cli(stack, "rules", "publish", str(second), "--as", "alice")
    assert proposed.returncode == 0, proposed.stderr
    assert "nothing changes until someone else approves it" in proposed.stdout
    assert [_v(r["version"]) for r in rule_history(stack)] == ["1"], "a proposal is not in force"
    pending = _cli(stack, "rules", "pending")
    change = pending.stdout.split()[0]
    assert "1 change(s) waiting" in pending.stdout, pending.stdout

    own = _cli(stack, "rules", "approve", change, "--as", "alice")
    assert own.returncode == 1 and "another person must approve" in own.stderr
    approved = _cli(stack, "rules", "approve", change, "--as", "bob")
    assert approved.returncode == 0, approved.stderr
    in_force = rule_history(stack)[-1]
    assert _v(in_force["version"]) == "2" and in_force["approved_by"] == "bob" and in_force["published_by"] == "alice"
    assert "0 change(s) waiting" in _cli(stack, "rules", "pending").stdout
    with pytest.raises(ApprovalError, match="no pending change"):
        decide_change(stack, change, True, "carol")

    asking = stack.model_copy(update={"require_approval": True})
    publish_rule_set(asking, RULES.format(version="3", limit=1), "v3.yaml", who="alice")
    change3 = pending_changes(stack)[0]["change_id"]
    decide_change(stack, change3, False, "bob")
    assert pending_changes(stack) == [] and _v(rule_history(stack)[-1]["version"]) == "2"

    rows = wait_for(lambda: query(stack, "SELECT actor, action, version, content_sha256, diff, origin, change_id "
                                         "FROM audit FINAL WHERE subject = 'rule set' ORDER BY at, action"),
                    60, "six audit rows", ok=lambda r: len(r) == 6)
    steps = [(r["actor"], r["action"], _v(r["version"])) for r in rows]
    assert rows[0]["origin"] and rows[1]["origin"] != rows[0]["origin"]
    assert steps == [("alice", "published", "1"), ("alice", "proposed", "2"), ("bob", "approved", "2"),
                     ("alice", "published", "2"), ("alice", "proposed", "3"), ("bob", "rejected", "3")], steps
    proposal = rows[1]
    assert "-    when: amount >= 500" in proposal["diff"] and "+    when: amount >= 300" in proposal["diff"]
    assert len(proposal["content_sha256"]) == 64 and "rules publish" in proposal["origin"]
    assert rows[2]["change_id"] == rows[3]["change_id"] == change
