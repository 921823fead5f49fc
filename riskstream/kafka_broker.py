"""Apache Kafka as the embedded broker (``RISKSTREAM_BROKER=kafka``): one KRaft node, broker and
controller in one JVM, from Apache Kafka's own jars.

The jars are resolved from Maven Central with Maven, from the pom in ``deploy/kafka/`` (version
pinned there and in :data:`KAFKA_VERSION`), into ``~/.cache/riskstream/kafka/<version>/libs``
once; later starts use the cache. Each start formats fresh storage under the data directory
(like the default broker's memory storage, the embedded broker starts empty), with a small
heap: the machine also runs the engine.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

from riskstream.settings import ConfigError, Settings, user_cache_dir

KAFKA_VERSION = "4.4.0"
POM = Path(__file__).resolve().parent.parent / "deploy" / "kafka" / "pom.xml"
MISSING = ("`--broker kafka` runs Apache Kafka from its jars, which needs {what} on the PATH "
           "(Debian: apt install {package}). The default embedded broker needs neither: leave "
           "RISKSTREAM_BROKER unset.")


def cache_dir() -> Path:
    return user_cache_dir() / "kafka" / KAFKA_VERSION


def java() -> str:
    found = shutil.which("java")
    if not found:
        raise ConfigError(MISSING.format(what="Java 17 or newer (`java`)", package="openjdk-17-jre-headless"))
    return found


def classpath(progress=lambda s: None) -> Path:
    """The directory of Kafka's jars, downloaded with Maven on first use."""
    libs = cache_dir() / "libs"
    done = cache_dir() / "complete"
    if done.exists():
        return libs
    mvn = shutil.which("mvn")
    if not mvn:
        raise ConfigError(MISSING.format(what="Maven (`mvn`)", package="maven"))
    if not POM.exists():
        raise ConfigError(f"{POM}: not found; `--broker kafka` needs the repository's deploy/kafka/pom.xml "
                          "(install riskstream from a checkout, `pip install -e .`).")
    progress(f"kafka    resolving Apache Kafka {KAFKA_VERSION} from Maven Central into {libs} (once) ...")
    shutil.rmtree(libs, ignore_errors=True)
    run = subprocess.run([mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
                          f"-DoutputDirectory={libs}", "-DincludeScope=runtime"],
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"Maven could not resolve Apache Kafka {KAFKA_VERSION}:\n{(run.stdout + run.stderr)[-3000:]}")
    done.write_text(KAFKA_VERSION)
    return libs


SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={data}
num.partitions={partitions}
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=8
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
"""

LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = out
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = INFO
"""


def prepare(settings: Settings, home: Path, port: int, controller: int, progress=lambda s: None) -> list[str]:
    """Write the node's configuration, format fresh storage, and return the broker's command."""
    libs = classpath(progress)
    jvm = java()
    data = home / "data"
    shutil.rmtree(data, ignore_errors=True)
    home.mkdir(parents=True, exist_ok=True)
    props = home / "server.properties"
    props.write_text(SERVER_PROPERTIES.format(port=port, controller=controller, data=data,
                                              partitions=settings.topic_partitions))
    log_config = home / "log4j2.properties"
    log_config.write_text(LOG4J2)
    cp = f"{libs}/*"
    fmt = subprocess.run([jvm, "-Xmx256m", f"-Dlog4j2.configurationFile={log_config}", "-cp", cp,
                          "kafka.tools.StorageTool", "format", "--standalone", "-t", _cluster_id(), "-c", str(props)],
                         capture_output=True, text=True)
    if fmt.returncode != 0:
        raise RuntimeError(f"formatting Kafka's storage in {data} failed:\n{(fmt.stdout + fmt.stderr)[-3000:]}")
    heap = f"-Xmx{settings.kafka_heap_mb}m"
    return [jvm, f"-Xms{min(256, settings.kafka_heap_mb)}m", heap, *settings.kafka_jvm_options.split(),
            "-XX:ActiveProcessorCount=2", "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={log_config}",
            "-cp", cp, "kafka.Kafka", str(props)]


def _cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (Kafka's Uuid).
    Not one that starts with "-": the storage tool would take it for an option (one start in
    64 failed so: "argument --cluster-id/-t: expected one argument")."""
    import base64

    while True:
        cluster = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster.startswith("-"):
            return cluster
