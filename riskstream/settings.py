"""One typed settings object for every riskstream process.

Each field is read from ``RISKSTREAM_<FIELD>`` (upper case), then from an optional YAML file
(``RISKSTREAM_CONFIG`` or ``--config``), then falls back to its default. Environment wins over
the file so that ``eval "$(riskstream stack up)"`` can point a configured worker at the
embedded stack.

A field left empty for Kafka, Redis or ClickHouse means "use the embedded stack": the broker
and Valkey that ``riskstream stack up`` started (their addresses are read from
``<data_dir>/stack.json``), and chDB under ``<data_dir>/clickhouse``.

>>> s = Settings(data_dir="/tmp/rs-doc")
>>> s.clickhouse_url()
'chdb:///tmp/rs-doc/clickhouse'
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConfigError(Exception):
    """A configuration problem a user can fix; the message names the file and line."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RISKSTREAM_", extra="forbid", frozen=True)

    data_dir: Path = Field(
        Path(".riskstream"),
        description="Where the embedded stack keeps its data: Valkey AOF, chDB tables, keys, logs.",
    )
    # --- Kafka -------------------------------------------------------------------------
    kafka_bootstrap: str = Field(
        "", description="Kafka bootstrap servers, e.g. 'kafka1:9092,kafka2:9092'. Empty: embedded broker."
    )
    broker: Literal["tansu", "kafka"] = Field(
        "tansu", description="The embedded broker: tansu (pip-only, memory storage) or kafka (Apache Kafka "
                             "from Maven Central; needs Java 17+ and Maven).")
    kafka_heap_mb: int = Field(512, ge=128, le=16384, description="Heap of the embedded Apache Kafka broker.")
    kafka_jvm_options: str = Field(
        "-XX:+UseSerialGC",
        description="JVM options of the embedded Apache Kafka broker besides its heap (space-separated). "
                    "The serial collector: G1's concurrent marking took more of the 2 cores than Kafka's own "
                    "request handling in a drain (bench/results/2026-12-05-kafka-gc.txt).")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security.protocol."
    )
    kafka_sasl_mechanism: str = Field("", description="SASL mechanism: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512.")
    kafka_sasl_username: str = Field("", description="SASL user name.")
    kafka_sasl_password: SecretStr = Field(SecretStr(""), description="SASL password (never printed).")
    kafka_ssl_cafile: str = Field("", description="CA bundle for TLS to Kafka.")
    topic_partitions: int = Field(4, ge=1, le=1024, description="Partitions for topics riskstream creates.")
    topic_replication: int = Field(1, ge=1, le=5, description="Replication factor for topics riskstream creates.")
    topic_prefix: str = Field("", description="Prefix for every topic name, to share a cluster.")
    consumer_group: str = Field("riskstream-worker", description="Consumer group of the transaction path.")
    operator: str = Field("", description="Who is acting, for the audit table (commands also take --as); "
                                          "empty: the login name.")
    require_approval: bool = Field(
        False, description="Maker-checker: `rules publish` (and `limits publish`) only propose a change; another "
                           "person's `riskstream rules approve ID` puts it in force.")
    processing_guarantee: Literal["at_least_once", "exactly_once"] = Field(
        "at_least_once",
        description="exactly_once: each batch's decisions, alerts, limit messages and sink rows, and the "
                    "input offsets they answer, go in one Kafka transaction (needs a broker that fences "
                    "transactions; checked at start, at-least-once otherwise).")
    transaction_timeout_ms: int = Field(
        10_000, ge=1000, le=900_000,
        description="exactly_once: a dead worker's open transaction is aborted after this long, and "
                    "read-committed consumers wait for it until then (unless a worker of the same "
                    "name restarts first and fences it at once).")
    worker_name: str = Field(
        "", description="Names this worker's transactional id (exactly_once). Give each worker its own "
                        "name that survives a restart; empty: host name and process id.")
    session_timeout_ms: int = Field(
        6000, ge=1000, description="Consumer session timeout; short, because a first join takes half of it."
    )
    # --- Redis ----------------------------------------------------------------------------
    redis_url: SecretStr = Field(
        SecretStr(""), description="Redis URL, e.g. redis://:pw@host:6379/0. Empty: embedded Valkey."
    )
    limit_key_prefix: str = Field("rs:limit:", description="Prefix of the Redis hash per controlled entity.")
    redis_timeout_ms: int = Field(
        1000, ge=50, le=60_000,
        description="How long the transaction path waits for Redis before deciding under the outage policy.")
    redis_outage_policy: dict[Literal["transactions", "loan_applications"], Literal["open", "closed"]] = Field(
        {"transactions": "open", "loan_applications": "closed"},
        description="Per stream, how a decision is made while Redis (credit lines) is unreachable: open lets "
                    "it stand (an authorisation is reserved when Redis is back), closed declines an "
                    "authorisation and refers a loan to review. JSON, e.g. {\"transactions\": \"closed\"}.")
    review_budget: float = Field(
        0.0, ge=0, lt=0.5, description="Review at most this share of a day's transactions (e.g. 0.005): the model's "
                                       "review threshold becomes the score quantile that gives it, and model-driven "
                                       "reviews past it are stepped up instead. 0: review_score decides.")
    step_up_budget: float = Field(
        0.0, ge=0, lt=0.5, description="Step up at most this share of a day's transactions (e.g. 0.02), as "
                                       "review_budget. 0: step_up_score decides.")
    fraud_challenger: Literal["off", "shadow", "promote"] = Field(
        "off", description="shadow: retrained LightGBM trees score every transaction beside the online model "
                           "(trained daily in event time on the settled decisions of the last 21 days; in a worker "
                           "in a background thread); their probability is stored in decisions.challenger_score. "
                           "promote: the same, and they decide once they beat the online model by "
                           "fraud_challenger_margin on the settled decisions of the last 7 days (AP and CP@100). "
                           "Costs a few µs a transaction to score (docs/model-quality.md).")
    fraud_calibration: Literal["platt", "off"] = Field(
        "platt", description="platt: the deciding fraud model's probability is calibrated once a day of event "
                             "time on the settled decisions of the last 7 days, or back until 50 settled frauds (Platt "
                             "scaling), so that the "
                             "thresholds are fraud rates; off: the model's own probability.")
    fraud_proof_auc: float = Field(
        0.8, ge=0, le=1, description="The online fraud model decides once it ranks the settled decisions it "
                                     "scored in shadow (the last 7 days, or back until 50 settled frauds, at most "
                                     "28) with at least this ROC AUC; until then "
                                     "the rules and the anomaly score decide. 0: as soon as it has warmed up.")
    fraud_challenger_margin: float = Field(
        0.02, ge=0, le=1, description="How far the challenger must lead on AP and on CP@100 to be promoted.")
    label_delays: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="Per labelled stream, how long each label source takes to speak, e.g. {\"transactions\": "
                    "{\"chargeback\": \"7d\", \"analyst\": \"1d\"}}: a transaction with no fraud label counts as "
                    "legit for the fraud model once the longest has passed. Unset: after one day, which measured "
                    "better when chargebacks take 2-30 days (docs/model-quality.md). A replay's --label-delay "
                    "sets it for the replay.")
    # --- ClickHouse ------------------------------------------------------------------------
    clickhouse_dsn: SecretStr = Field(
        SecretStr(""),
        description="ClickHouse DSN, e.g. https://user:pw@host:8443/risk. Empty: chDB under data_dir.",
    )
    sink_flush_interval_ms: int = Field(
        1000, ge=10, le=60_000,
        description="How long the sink gathers rows before one insert per table: larger inserts make "
                    "fewer parts for ClickHouse to merge (rows are this much later in queries).",
    )
    sink_query_port: int = Field(
        0, ge=0, le=65535, description="Port of the sink's query endpoint (embedded mode); 0 picks a free one."
    )
    # --- Hot path --------------------------------------------------------------------------
    batch_max_events: int = Field(5000, ge=1, le=100_000, description="Most transactions in one batch.")
    batch_linger_ms: int = Field(
        5, ge=0, le=1000,
        description="When a fetch brings less than a full batch, wait this long for more before scoring "
                    "(fewer, larger batches at low rates: less CPU and fewer broker requests per transaction).",
    )
    commit_interval_ms: int = Field(
        200, ge=0, le=60_000,
        description="Offsets of finished batches are committed together at most this often "
                    "(a crash repeats at most this much; outputs are idempotent).",
    )
    produce_linger_ms: int = Field(
        5, ge=0, le=1000,
        description="How long the output producer gathers decisions into one request. Every decision "
                    "waits up to this long: 5 suits the embedded broker (fewer, larger requests); on "
                    "Kafka, 0-1 for the lowest latency.",
    )
    partition_lead_ms: int = Field(
        3_600_000, ge=0,
        description="While a backlog is drained, a transaction partition this far ahead in event time of "
                    "the slowest one with records left waits, not fetched, until it catches up (labels, "
                    "maturity and learning wait for the slowest). 0: no waiting.",
    )
    fetch_max_wait_ms: int = Field(
        20, ge=0, le=5000,
        description="Longest a fetch waits for data; a broker that holds fetches this long (Tansu does) adds it to latency.",
    )
    max_message_bytes: int = Field(
        65536, ge=512, description="Larger input messages are dead-lettered as oversized."
    )
    max_amount: float = Field(
        10_000_000.0, gt=0, description="Amounts above this are absurd and dead-lettered."
    )
    pan_key: SecretStr = Field(
        SecretStr(""),
        description="Key for tokenizing card numbers (HMAC-SHA256). Empty: a random key kept in data_dir.",
    )
    pan_key_file: str = Field(
        "", description="Tokenization keys instead of pan_key, one per line: '<version> <key>' for the newest, "
                        "'<version> <key> until <YYYY-MM-DD>' for a retired key whose tokens are still matched until "
                        "that day (docs/reliability.md, key rotation). Keep it readable by the engine only.")
    personal_fields: list[str] = Field(
        default_factory=list, description="Fields of any input stream tokenized like card numbers at ingress, "
                                          "e.g. [\"email\", \"phone\", \"national_id\"] (JSON in the environment).")
    rules_file: str = Field("", description="Rule set loaded at start-up. Empty: the built-in rule set.")
    decline_score: float = Field(0.90, gt=0, le=1, description="Model score at or above which a transaction is declined.")
    review_score: float = Field(0.60, gt=0, le=1, description="Model score at or above which it goes to review.")
    step_up_score: float = Field(0.35, gt=0, le=1, description="Model score at or above which it needs step-up auth.")
    credit_file: str = Field(
        "", description="Credit policy (YAML: rules, PD model, decision bands, limit; see rules/credit.yaml). "
                        "Empty: the built-in one.")
    credit_near_utilisation: float = Field(
        0.9, gt=0, le=1, description="Share of a credit line used at which an authorisation goes to review "
                                     "(and crossing it raises an alert).")
    credit_dedup_days: float = Field(
        7.0, gt=0, le=400, description="How long the credit ledger remembers an event's answer, so that a "
                                       "repeat (restart, replay) changes nothing; ~100 bytes of Redis per event.")
    dedup_window_hours: float = Field(
        48.0, ge=0, le=24 * 400, description="How long a worker remembers each transaction's decision, so that the "
                                             "same transaction id again (a record read again, a re-sent or replayed "
                                             "transaction) gets the same decision and counts once; ~65 bytes of "
                                             "Redis per transaction. 0 turns it off (a repeat is scored afresh).")
    limits_file: str = Field("", description="Market-risk limits (YAML, see rules/limits.py). Empty: no limits.")
    market_history_days: int = Field(
        250, ge=30, le=2000, description="Calendar days of daily returns behind portfolio VaR and ES.")
    market_ewma_lambda: float = Field(
        0.94, gt=0, lt=1, description="Decay of the EWMA volatility that rescales past returns (filtered HS).")
    market_volatility: Literal["gjr", "ewma"] = Field(
        "gjr", description="Volatility filter of portfolio VaR/ES: GJR-GARCH once an instrument has "
                           "market_fit_min_returns daily returns (EWMA before), or EWMA throughout.")
    market_refit_days: int = Field(20, ge=1, le=500, description="Daily returns between two GJR-GARCH refits.")
    market_fit_min_returns: int = Field(
        250, ge=100, le=5000, description="Daily returns an instrument needs before GJR-GARCH is fitted.")
    market_refit_background: bool = Field(
        True, description="Fit GJR-GARCH in a helper process (the worker); false fits in line, "
                          "deterministically (replays and backtests set this).")
    risk_refresh_interval_s: float = Field(
        60.0, ge=0, description="Event-time seconds between two portfolio_risk rows of a portfolio.")
    shutdown_timeout_s: float = Field(8.0, gt=0, description="Bound on a worker's graceful stop.")
    state_checkpoint_interval_s: float = Field(
        300.0, ge=5.0,
        description="Seconds between feature/model state checkpoints to Redis (also at revoke and stop); "
                    "measured ~84 MB and 0.36 s per partition of 250k cards.",
    )
    web_port: int = Field(0, ge=0, le=65535, description="Faust web port; 0 picks a free one.")
    log_level: str = Field("WARNING", description="Log level of workers.")

    # ------------------------------------------------------------------------------------
    @property
    def embedded(self) -> bool:
        return not self.kafka_bootstrap

    def stack_file(self) -> Path:
        return self.data_dir.resolve() / "stack.json"

    def stack_state(self) -> dict[str, Any]:
        path = self.stack_file()
        if not path.exists():
            return {}
        return json.loads(path.read_text())

    def kafka_servers(self) -> str:
        if self.kafka_bootstrap:
            return self.kafka_bootstrap
        state = self.stack_state()
        if "kafka" not in state:
            raise ConfigError(
                "No Kafka to talk to: RISKSTREAM_KAFKA_BOOTSTRAP is empty and no embedded stack is up "
                f"under {self.data_dir}. Run `riskstream stack up` (or `riskstream demo`)."
            )
        return state["kafka"]

    def redis_target(self) -> str:
        url = self.redis_url.get_secret_value()
        if url:
            return url
        state = self.stack_state()
        if "redis" not in state:
            raise ConfigError(
                "No Redis to talk to: RISKSTREAM_REDIS_URL is empty and no embedded stack is up "
                f"under {self.data_dir}. Run `riskstream stack up`."
            )
        return state["redis"]

    def clickhouse_url(self) -> str:
        dsn = self.clickhouse_dsn.get_secret_value()
        if dsn:
            return dsn
        return f"chdb://{(self.data_dir.resolve() / 'clickhouse').as_posix()}"

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    def kafka_client_config(self) -> dict[str, str]:
        """librdkafka (confluent-kafka) settings: servers plus security."""
        conf = {
            "bootstrap.servers": self.kafka_servers(),
            "security.protocol": self.kafka_security_protocol,
            # A broker closing idle connections is normal; do not print it as a failure.
            "log.connection.close": False,
        }
        if self.kafka_sasl_mechanism:
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism
            conf["sasl.username"] = self.kafka_sasl_username
            conf["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        if self.kafka_ssl_cafile:
            conf["ssl.ca.location"] = self.kafka_ssl_cafile
        return conf

    def aiokafka_config(self) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "bootstrap_servers": self.kafka_servers(),
            "security_protocol": self.kafka_security_protocol,
        }
        if self.kafka_sasl_mechanism:
            conf["sasl_mechanism"] = self.kafka_sasl_mechanism
            conf["sasl_plain_username"] = self.kafka_sasl_username
            conf["sasl_plain_password"] = self.kafka_sasl_password.get_secret_value()
        if self.kafka_ssl_cafile:
            from aiokafka.helpers import create_ssl_context

            conf["ssl_context"] = create_ssl_context(cafile=self.kafka_ssl_cafile)
        return conf

    def label_maturity_ms(self, stream: str) -> int | None:
        """When an unlabelled event of ``stream`` counts as a negative: the longest delay of
        its label sources (None if none is configured)."""
        from riskstream.streams.reading import ReplayError, parse_duration

        delays = self.label_delays.get(stream) or {}
        try:
            return max((parse_duration(d) for d in delays.values()), default=None)
        except ReplayError as exc:
            raise ConfigError(f"label_delays[{stream!r}]: {exc}".replace("--label-delay ", "")) from None

    def pan_keys(self) -> tuple[int, bytes, list[tuple[int, bytes, int]]]:
        """(version, key) of the key that tokenizes, and the retired keys still matched as
        (version, key, until epoch ms): from ``pan_key_file`` if set, else ``pan_key`` (or the
        data dir's key) as version 1."""
        if not self.pan_key_file:
            return 1, self.pan_key_bytes(), []
        path = Path(self.pan_key_file)
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"pan_key_file {path}: cannot be read ({exc.strerror}).") from None
        keys: dict[int, tuple[bytes, int | None]] = {}
        for number, line in enumerate(lines, 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            where = f"{path}:{number}"
            if len(words) not in (2, 4) or not words[0].isdigit() or int(words[0]) < 1 or (
                    len(words) == 4 and words[2] != "until"):
                raise ConfigError(f"{where}: expected '<version> <key>' or '<version> <key> until <YYYY-MM-DD>' "
                                  "(the key itself is not shown here)")
            version = int(words[0])
            if version in keys:
                raise ConfigError(f"{where}: key version {version} appears twice")
            if len(words[1]) < 16:
                raise ConfigError(f"{where}: the key of version {version} is shorter than 16 characters")
            until = None
            if len(words) == 4:
                try:
                    day = datetime.date.fromisoformat(words[3])
                except ValueError:
                    raise ConfigError(f"{where}: '{words[3]}' is not a date (YYYY-MM-DD)") from None
                until = int(datetime.datetime.combine(day, datetime.time(), datetime.timezone.utc).timestamp() * 1000)
            keys[version] = (words[1].encode(), until)
        if not keys:
            raise ConfigError(f"{path}: no key in the file")
        newest = max(keys)
        if keys[newest][1] is not None:
            raise ConfigError(f"{path}: the newest key (version {newest}) must not have an end date")
        retired = [(v, k, until) for v, (k, until) in sorted(keys.items()) if v != newest and until is not None]
        return newest, keys[newest][0], retired

    def pan_key_bytes(self) -> bytes:
        """The tokenization key; in embedded mode a random one is created once per data dir."""
        key = self.pan_key.get_secret_value()
        if key:
            return key.encode()
        path = self.data_dir.resolve() / "pan.key"
        if not path.exists():
            # Workers started together on a fresh data dir all get here. The key is written
            # whole under a name of its own and then linked into place, which fails if another
            # process linked first: every process then reads the one key, never a half-written
            # file (creating pan.key itself crashed the second of two workers, and could have
            # let it read an empty key and tokenize cards differently).
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, own = tempfile.mkstemp(dir=path.parent, prefix=".pan.key.")  # mode 0600
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_hex(32))
                try:
                    os.link(own, path)
                except FileExistsError:
                    pass  # another process made the key first: use theirs
            finally:
                os.unlink(own)
        key = path.read_text().strip()
        if not key:
            raise ConfigError(f"{path} is empty. Delete it to create a new key only if no card was "
                              "tokenized with it yet; otherwise restore it from your backup.")
        return key.encode()

    def describe(self) -> dict[str, str]:
        """Settings for display, secrets masked."""
        out = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "******" if value.get_secret_value() else ""
            out[name] = str(value)
        return out


def user_cache_dir() -> Path:
    """Where riskstream keeps what it can build again (Kafka's jars, compiled rule kernels):
    ``$XDG_CACHE_HOME/riskstream``, else ``~/.cache/riskstream``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "riskstream"


def _yaml_key_lines(text: str) -> dict[str, int]:
    """Line number (1-based) of every top-level key, for error messages."""
    node = yaml.compose(text)
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, _ in node.value:
            lines[str(key_node.value)] = key_node.start_mark.line + 1
    return lines


def load_settings(config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Build settings from env vars, an optional YAML file and explicit overrides.

    Errors name the file and line of the offending key, and say what is expected.
    """
    config_file = config_file or os.environ.get("RISKSTREAM_CONFIG") or None
    file_values: dict[str, Any] = {}
    key_lines: dict[str, int] = {}
    if config_file:
        path = Path(config_file)
        if not path.exists():
            raise ConfigError(f"{path}: config file not found (from --config or RISKSTREAM_CONFIG).")
        text = path.read_text()
        try:
            loaded = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}:1: expected a mapping of setting: value, got {type(loaded).__name__}.")
        key_lines = _yaml_key_lines(text)
        # Environment variables win over the file.
        file_values = {
            k: v for k, v in loaded.items() if f"RISKSTREAM_{str(k).upper()}" not in os.environ
        }
    try:
        return Settings(**{**file_values, **overrides})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            if field in key_lines and field in file_values:
                where = f"{config_file}:{key_lines[field]}"
            elif f"RISKSTREAM_{field.upper()}" in os.environ:
                where = f"env RISKSTREAM_{field.upper()}"
            else:
                where = "settings"
            if err["type"] == "extra_forbidden":
                known = ", ".join(sorted(Settings.model_fields))
                problems.append(f"{where}: unknown setting '{field}'. Known settings: {known}")
            else:
                problems.append(f"{where}: {field}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("\n".join(problems)) from exc
