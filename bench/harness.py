"""The bench's harness: the embedded stack and worker processes it starts, and what it reads
off them (CPU seconds, peak memory, percentiles)."""

from __future__ import annotations
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
import numpy as np
import psutil
from riskstream.settings import Settings


Progress = Callable[[str], None]


def quiet(_: str) -> None:
    pass


# ------------------------------------------------------------------------------------------
# machine and process measurements
# ------------------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def peak_rss_mb(pid: int | None = None) -> float:
    """VmHWM (the kernel's peak resident set) of a process, in MB; psutil only has current RSS."""
    try:
        with open(f"/proc/{pid or os.getpid()}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def cpu_seconds(pids: list[int], children: bool = True) -> float:
    """user+sys of these processes (and their children); a process that is gone counts 0."""
    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            procs = [proc, *proc.children(recursive=True)] if children else [proc]
        except psutil.Error:
            continue
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
    return total


# ------------------------------------------------------------------------------------------
# the stack and processes
# ------------------------------------------------------------------------------------------
class ProcessGroup:
    """Every subprocess the bench starts, so that one place stops them all (exit, Ctrl-C)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def add(self, proc: subprocess.Popen) -> subprocess.Popen:
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 10.0) -> None:
        from riskstream.stack import stop_process

        stop_process(proc, timeout)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.procs):
            self.stop(proc, timeout=5.0)


@dataclass
class BenchStack:
    """An attached EmbeddedStack with its client settings."""

    stack: Any
    settings: Settings  # points clients at this stack explicitly
    state: dict

    def service_pids(self) -> dict[str, int]:
        return {s.name: s.process.pid for s in self.stack.services}

    def roles(self, workers: list[subprocess.Popen]) -> dict[str, list[int]]:
        """Process ids by role, for CPU accounting: workers, each service, and this process."""
        return {"workers": [w.pid for w in workers], **{k: [v] for k, v in self.service_pids().items()},
                "bench": [os.getpid()]}


def start_stack(base: Settings, data_dir: Path, progress: Progress = quiet, warm_s: float = 0.0) -> BenchStack:
    from pydantic import SecretStr

    from riskstream.stack import EmbeddedStack

    settings = base.model_copy(update={"data_dir": data_dir, "kafka_bootstrap": "", "redis_url": SecretStr("")})
    stack = EmbeddedStack(settings, with_sink=True)
    t0 = time.perf_counter()
    stack.start(progress=lambda s: progress(f"  {s}"))
    state = settings.stack_state()
    client = settings.model_copy(update={"kafka_bootstrap": state["kafka"], "redis_url": SecretStr(state["redis"])})
    progress(f"  stack up in {time.perf_counter() - t0:.1f}s")
    if settings.broker == "kafka" and warm_s > 0:
        warm_broker(client, warm_s, progress)
    return BenchStack(stack, client, state)


def warm_broker(settings: Settings, seconds: float, progress: Progress = quiet) -> None:
    """Apache Kafka runs in a JVM whose JIT compiles the produce and fetch paths during the
    first minute of traffic, on the same cores as everything else (at 10,000/s the broker took
    125% of a core in the first 5 s and 53% by the 20th). A broker in service is warm, so
    the figures are taken after ``seconds`` of produce and fetch on a topic of the bench's own."""
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = settings.topic("bench-warmup")
    admin = AdminClient(settings.kafka_client_config())  # kept: its futures die with it
    admin.create_topics([NewTopic(topic, settings.topic_partitions, 1)])[topic].result(30)
    producer = Producer({**settings.kafka_client_config(), "linger.ms": 2, "compression.type": "lz4",
                         "queue.buffering.max.messages": 200_000})
    consumer = Consumer({**settings.kafka_client_config(), "group.id": f"bench-warmup-{os.getpid()}",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(settings.topic_partitions)])
    value = b'{"transaction_id":"warm-up","amount":12.5,"pad":"' + b"x" * 240 + b'"}'
    t0 = time.perf_counter()
    sent = read = 0
    while time.perf_counter() - t0 < seconds:
        for i in range(2000):  # in small steps: the JIT warms on requests, not on bytes
            try:
                producer.produce(topic, value=value, key=str(sent + i).encode())
            except BufferError:
                producer.poll(0.01)
        sent += 2000
        producer.poll(0)
        read += len(consumer.consume(10_000, timeout=0.01))
    producer.flush(30)
    consumer.close()
    progress(f"  broker warm-up: {sent:,} messages produced and {read:,} fetched in {seconds:.0f}s "
             "(Kafka's JIT, as a broker in service)")


def start_worker(bs: BenchStack, group: ProcessGroup, index: int) -> subprocess.Popen:
    from riskstream.stack import _die_with_parent

    s = bs.settings
    env = dict(os.environ)
    env.update({
        "RISKSTREAM_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
        "RISKSTREAM_REDIS_URL": s.redis_url.get_secret_value(),
        "RISKSTREAM_DATA_DIR": str(s.data_dir),
        "RISKSTREAM_SESSION_TIMEOUT_MS": str(s.session_timeout_ms),
        "RISKSTREAM_TOPIC_PARTITIONS": str(s.topic_partitions),
        "RISKSTREAM_PROCESSING_GUARANTEE": s.processing_guarantee,
        "RISKSTREAM_WORKER_NAME": f"bench-{index}",
    })
    log = s.data_dir / "logs" / f"bench-worker-{index}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return group.add(subprocess.Popen([sys.executable, "-m", "riskstream", "worker"], env=env, stdout=out,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          preexec_fn=_die_with_parent))


def percentiles(ms: np.ndarray, *names: str) -> dict[str, float]:
    """Named figures of a latency sample in ms ("p50", "p99", ..., "max", "mean"), rounded."""
    def one(name: str) -> float:
        if name == "max":
            return float(ms.max())
        if name == "mean":
            return float(ms.mean())
        return float(np.percentile(ms, float(name[1:])))
    return {name: round(one(name), 2) for name in names}


def p50_p99(ms: np.ndarray) -> dict[str, float]:
    return percentiles(ms, "p50", "p99")
