"""Settings errors name the file and line; the embedded stack leaves no orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from riskstream.settings import ConfigError, Settings, load_settings
from riskstream.stack import pid_alive


def test_yaml_errors_name_file_and_line(tmp_path, monkeypatch):
    monkeypatch.delenv("RISKSTREAM_TOPIC_PARTITIONS", raising=False)
    cfg = tmp_path / "riskstream.yaml"
    cfg.write_text("data_dir: /tmp/x\n\ntopic_partitions: lots\nbatch_max_events: 100\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert f"{cfg}:3: topic_partitions" in str(err.value)

    cfg.write_text("data_dir: /tmp/x\nkafka_bootstrp: broker:9092\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert f"{cfg}:2: unknown setting 'kafka_bootstrp'" in str(err.value)
    assert "kafka_bootstrap" in str(err.value)  # the known settings are listed

    cfg.write_text("data_dir: [unclosed\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert str(cfg) in str(err.value) and "not valid YAML" in str(err.value)


def test_environment_wins_over_the_file_and_secrets_are_masked(tmp_path, monkeypatch):
    cfg = tmp_path / "riskstream.yaml"
    cfg.write_text("batch_max_events: 100\nkafka_sasl_password: hunter2\n")
    monkeypatch.setenv("RISKSTREAM_BATCH_MAX_EVENTS", "250")
    s = load_settings(cfg)
    assert s.batch_max_events == 250
    assert s.describe()["kafka_sasl_password"] == "******"
    assert "hunter2" not in repr(s)


def test_workers_starting_together_share_one_pan_key(tmp_path, monkeypatch):
    """Two workers on a fresh data dir: the one that finds pan.key made between its check and
    its write uses that key (it crashed before: a 2-worker bench run lost a worker to it)."""
    from pathlib import Path

    settings = Settings(data_dir=tmp_path)
    first = settings.pan_key_bytes()
    assert len(first) == 64 and (tmp_path / "pan.key").stat().st_mode & 0o777 == 0o600
    monkeypatch.setattr(Path, "exists", lambda self: False)  # lost the race after checking
    assert Settings(data_dir=tmp_path).pan_key_bytes() == first
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["pan.key"]  # no temporary file left

    import threading

    keys: list[bytes] = []
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        keys.append(Settings(data_dir=tmp_path / "fresh").pan_key_bytes())

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(keys) == 8 and len(set(keys)) == 1 and len(keys[0]) == 64

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "pan.key").write_text("")
    with pytest.raises(ConfigError, match="pan.key is empty"):
        Settings(data_dir=tmp_path / "empty").pan_key_bytes()


def test_missing_stack_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="riskstream stack up"):
        Settings(data_dir=tmp_path).kafka_servers()


def test_stack_dies_with_a_killed_cli(tmp_path):
    """An attached stack must not outlive its CLI, even one killed with SIGKILL."""
    script = textwrap.dedent(f"""
        import sys, time
        from riskstream.settings import Settings
        from riskstream.stack import EmbeddedStack
        s = EmbeddedStack(Settings(data_dir={str(tmp_path)!r}), with_sink=False)
        s.start()
        print(" ".join(str(svc.process.pid) for svc in s.services), flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2 and all(pid_alive(p) for p in pids)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(5)
    deadline = time.monotonic() + 10
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(pid_alive(p) for p in pids), "broker or Valkey outlived the CLI"


def test_the_package_keeps_blas_to_one_thread_unless_the_user_chose():
    """OpenBLAS's idle helper threads spin on the cores the broker and chDB need; the package
    caps them before numpy loads (no helper thread starts), and leaves a value the user set."""
    probe = ("import riskstream, numpy, os;"
             "print(os.environ['OPENBLAS_NUM_THREADS'], len(os.listdir('/proc/self/task')))")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    unset = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    chosen = subprocess.run([sys.executable, "-c", probe], env={**env, "OPENBLAS_NUM_THREADS": "2"},
                            capture_output=True, text=True, check=True)
    assert unset.stdout.split() == ["1", "1"]
    assert chosen.stdout.split() == ["2", str(min(2, os.cpu_count() or 1))]  # OpenBLAS caps at the cores
