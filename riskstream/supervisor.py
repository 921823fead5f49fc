"""The embedded stack keeps its services up: a broker, Valkey or sink that exits is started
again with the same command, port and data directory, and the restart is written to the
service's log, to stderr and to ``stack.json`` (``riskstream stack status`` shows it).

Attached (``riskstream demo``, ``chaos``, tests) a thread of the command supervises; detached
(``riskstream stack up``) a ``riskstream stack supervise`` process does, until ``stack down``.

What a restart keeps: Valkey its append-only file, the sink its chDB tables (and it reads on
from its committed offsets), Apache Kafka its log directory. Tansu keeps topics in memory, so
a restarted Tansu starts empty: the topics are created again, and what it held is gone.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from datetime import datetime, timezone

from riskstream.stack import (EmbeddedStack, Service, _sink_ready, ensure_topics, pid_alive, port_open,
                              wait_until)


class Supervisor:
    def __init__(self, stack: EmbeddedStack, interval_s: float = 0.5):
        self.stack = stack
        self.interval_s = interval_s

    def run(self, stop: threading.Event) -> None:
        """Check every ``interval_s`` until ``stop``; then stop the services (from this thread)."""
        try:
            while not stop.wait(self.interval_s):
                self.check()
        finally:
            self.stack.stop_services()

    def check(self) -> None:
        for svc in list(self.stack.services):
            code = svc.process.poll()
            if code is not None:
                self.restart(svc, code)

    def restart(self, svc: Service, code: int) -> None:
        at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        note = f"{at} riskstream stack: {svc.name} exited (code {code}); starting it again on port {svc.port}"
        if svc.name == "broker" and self.stack.settings.broker == "tansu":
            note += " (Tansu keeps topics in memory: it starts empty)"
        _say(note, svc)
        new = self.stack._spawn(svc.name, svc.argv, svc.port, svc.env)
        ready = (lambda: _sink_ready(svc.port)) if svc.name == "sink" else (lambda: port_open(svc.port))
        try:
            wait_until(lambda: ready() or new.process.poll() is not None, 60, svc.name, new.log)
        except RuntimeError as exc:
            _say(f"riskstream stack: {svc.name} did not come back: {exc}", svc)
            return
        if new.process.poll() is not None:
            return  # exited again: the next check tries again
        if svc.name == "broker":
            state = self.stack.settings.stack_state()
            ensure_topics(self.stack.settings.model_copy(update={"kafka_bootstrap": state.get("kafka", "")}))
        self._record(svc.name, new.process.pid, at)
        _say(f"riskstream stack: {svc.name} is back (pid {new.process.pid})", svc)

    def _record(self, name: str, pid: int, at: str) -> None:
        path = self.stack.settings.stack_file()
        state = json.loads(path.read_text()) if path.exists() else {}
        state.setdefault("pids", {})[name] = pid
        restarts = state.setdefault("restarts", {})
        restarts[name] = {"count": restarts.get(name, {}).get("count", 0) + 1, "last": at}
        path.write_text(json.dumps(state, indent=2))


def _say(text: str, svc: Service) -> None:
    print(text, file=sys.stderr, flush=True)
    with open(svc.log, "a") as log:
        log.write(text + "\n")


class _Adopted:
    """A service process started by an earlier `stack up` (not our child): enough of Popen."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and not pid_alive(self.pid):
            self.returncode = -1  # not ours to wait for: its exit code is unknown
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if pid_alive(self.pid):
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        deadline = time.monotonic() + (timeout if timeout is not None else 1e9)
        while self.poll() is None:
            if time.monotonic() > deadline:
                import subprocess

                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
            time.sleep(0.05)
        return self.returncode or 0


def supervise_detached(settings) -> int:
    """`riskstream stack supervise`: watch the services `stack up` started until SIGTERM."""
    state = settings.stack_state()
    if not state:
        print("riskstream stack supervise: no stack.json; start the stack with `riskstream stack up`.", file=sys.stderr)
        return 1
    stack = EmbeddedStack(settings, detached=True)
    logs = settings.data_dir.resolve() / "logs"
    for name, spec in state.get("services", {}).items():
        stack.services.append(Service(name, _Adopted(state["pids"][name]), spec["port"], logs / f"{name}.log",
                                      spec["argv"], spec.get("env")))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    supervisor = Supervisor(stack)
    while not stop.wait(supervisor.interval_s):
        supervisor.check()
    return 0  # `stack down` stops the services after this process has ended
