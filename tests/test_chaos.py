"""`riskstream chaos` as an operator runs it, in its short form: workers SIGKILLed at random
moments while every demo stream flows, then the accounting must show nothing lost."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_five_kills_of_two_workers_lose_nothing_on_any_stream(tmp_path):
    env = dict(os.environ, RISKSTREAM_DATA_DIR=str(tmp_path / "rs"))
    done = subprocess.run([sys.executable, "-m", "riskstream", "chaos", "--events", "6000", "--kills", "5",
                           "--rate", "4000", "--seed", "3"], env=env, capture_output=True, text=True, timeout=600)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr[-4000:]
    assert "5 worker kill(s) survived (5 restarts)" in out
    rows = {m.group(1): [int(x.replace(",", "")) for x in m.group(2).split()[:3]]
            for m in re.finditer(r"^(\w+)\s+([\d,]+\s+[\d,]+\s+[\d,]+)", out, re.M)}
    assert rows["transactions"] == [6000, 6000, 0], out
    for stream in ("loan_applications", "labels", "market", "positions", "malformed"):
        events, stored, lost = rows[stream]
        assert events > 0 and stored >= events and lost == 0, (stream, out)
    assert "lost: 0; repeated decisions that changed: 0. Nothing lost." in out
    assert done.stderr.count("SIGKILL worker-") == 5
