"""The rule-reload bench's own parts (the bench itself needs a stack and runs by hand:
`.venv/bin/python -m riskstream.bench.rule_reload`); no timings asserted."""

from __future__ import annotations

import numpy as np

from riskstream.bench.rule_reload import TRAP_MERCHANT, log_time, rule_set_text
from riskstream.rules.compiler import compile_rule_set
from riskstream.rules.language import validate_rule_set
from riskstream.streams.processors import transaction_rule_columns


def test_each_round_is_a_new_version_that_declines_the_trap_on_the_workers_columns():
    texts = [rule_set_text(k, "t") for k in (1, 2)]
    sets = [validate_rule_set(t, "bench") for t in texts]
    assert sets[0].version_tag != sets[1].version_tag
    compiled = compile_rule_set(sets[1], transaction_rule_columns())
    columns = {c: np.zeros(2) for c in compiled.numeric_columns}
    columns.update({c: np.array(["", ""], dtype=object) for c in compiled.columns if c not in columns})
    columns["merchant_id"] = np.array([TRAP_MERCHANT, "M0001"], dtype=object)
    columns["amount"] = np.array([50.0, 50.0])
    outcome = compiled.evaluate(columns)
    trap = compiled.rule_ids.index("bench_trap_2")
    assert outcome.hits[trap].tolist() == [True, False] and compiled.rule_set.rules[-1].action == "decline"


def test_worker_log_time_reads_faust_and_logging_lines(tmp_path):
    log = tmp_path / "worker.log"
    log.write_text("[2024-06-01 12:00:00,250] [42] [WARNING] rule set v1#ab from x: compiling \n"
                   "2024-06-01 12:00:01,500 WARNING riskstream.worker: rule set v2#cd from y: compiling\n")
    assert log_time(log, "v2#cd") - log_time(log, "v1#ab") == 1.25
    assert log_time(log, "v3#ef") != log_time(log, "v3#ef")  # not there: NaN
