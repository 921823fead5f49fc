-- riskstream's ClickHouse tables. Created idempotently by the sink at start-up.
-- Replacing engines keyed by the event make replays and retries idempotent: a re-delivered
-- batch replaces its rows instead of adding to them. Query with FINAL (or after
-- OPTIMIZE ... FINAL) to see exactly one row per key.

-- One row per decided event (transaction or loan application).
CREATE TABLE IF NOT EXISTS decisions (
    event_id      String,
    stream        LowCardinality(String),
    entity_id     String,
    event_time    DateTime64(3, 'UTC'),
    decided_at    DateTime64(3, 'UTC'),
    score         Float32,                 -- risk probability in [0, 1]
    decision      LowCardinality(String),  -- approve | review | step_up | decline
    reasons       Array(String),           -- reason codes with readable text
    rules_version String,
    model_version String,
    amount        Float64,
    granted       Nullable(Float64)         -- loan applications: the amount or limit offered
) ENGINE = ReplacingMergeTree(decided_at)
PARTITION BY toYYYYMM(event_time)
ORDER BY (stream, event_id);

-- Alerts for the risk desk; severity = likelihood x impact.
CREATE TABLE IF NOT EXISTS alerts (
    alert_id       String,
    event_id       String,
    stream         LowCardinality(String),
    entity_id      String,
    event_time     DateTime64(3, 'UTC'),
    raised_at      DateTime64(3, 'UTC'),
    kind           LowCardinality(String),
    severity       Float32,
    severity_level LowCardinality(String),  -- low | medium | high | critical
    score          Float32,
    amount_at_risk Float64,
    reasons        Array(String),
    rules_version  String
) ENGINE = ReplacingMergeTree(raised_at)
PARTITION BY toYYYYMM(event_time)
ORDER BY alert_id;

-- Limit controls sent to transaction services (also in Redis and on the limits topic).
CREATE TABLE IF NOT EXISTS limits (
    entity_type   LowCardinality(String),
    entity_id     String,
    action        LowCardinality(String),  -- block | cut_limit
    max_amount    Float64,                 -- 0 for a block
    valid_until   DateTime64(3, 'UTC'),
    reason        String,
    event_id      String,
    issued_at     DateTime64(3, 'UTC'),
    rules_version String
) ENGINE = ReplacingMergeTree(issued_at)
ORDER BY (entity_type, entity_id, event_id);

-- Records that could not be processed, with the reason and their bytes (card numbers masked).
CREATE TABLE IF NOT EXISTS dead_letters (
    received_at DateTime64(3, 'UTC'),
    topic       LowCardinality(String),
    partition   Int32,
    offset      Int64,
    error       String,
    payload     String
) ENGINE = ReplacingMergeTree(received_at)
ORDER BY (topic, partition, offset, cityHash64(payload));

-- The scored transactions themselves (card ids are tokens when a PAN came in).
CREATE TABLE IF NOT EXISTS transactions (
    transaction_id String,
    event_time     DateTime64(3, 'UTC'),
    card_id        String,
    merchant_id    String,
    terminal_id    String,
    customer_id    String,
    amount         Float64,
    currency       LowCardinality(String),
    country        LowCardinality(String),
    channel        LowCardinality(String),
    mcc            LowCardinality(String),
    device_id      String,
    ip             String,
    account_id     String,
    lat            Float64,
    lon            Float64,
    score          Float32,
    decision       LowCardinality(String),
    partition      Int32,
    offset         Int64
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY transaction_id;

CREATE TABLE IF NOT EXISTS market_ticks (
    instrument String,
    event_time DateTime64(3, 'UTC'),
    price      Float64,
    volume     Float64
) ENGINE = ReplacingMergeTree
ORDER BY (instrument, event_time);

CREATE TABLE IF NOT EXISTS positions (
    portfolio_id String,
    instrument   String,
    event_time   DateTime64(3, 'UTC'),
    quantity     Float64,
    price        Float64,
    desk         LowCardinality(String)
) ENGINE = ReplacingMergeTree
ORDER BY (portfolio_id, instrument, event_time);

-- The amounts the engine knows (NULL when the lender did not send them), and every other
-- attribute of the application as the lender sent it: a JSON object of numbers and texts.
CREATE TABLE IF NOT EXISTS loan_applications (
    application_id String,
    event_time     DateTime64(3, 'UTC'),
    customer_id    String,
    amount         Nullable(Float64),
    income         Nullable(Float64),
    term_months    Nullable(Float64),
    existing_debt  Nullable(Float64),
    attributes     String
) ENGINE = ReplacingMergeTree
ORDER BY application_id;

-- Credit-line events and what each did: settlements, reversals, repayments and limit changes
-- (from the account_events stream, approved loan applications and `riskstream credit-line set`:
-- the audit trail of every limit), with the line after the event, in the line's currency.
CREATE TABLE IF NOT EXISTS account_events (
    event_id       String,
    event_time     DateTime64(3, 'UTC'),
    account_id     String,
    kind           LowCardinality(String),   -- settlement | reversal | repayment | limit_change
    amount         Float64,
    auth_id        String,
    source         String,
    status         LowCardinality(String),   -- ok | none (no such line)
    limit_after    Float64,
    balance_after  Float64,
    reserved_after Float64
) ENGINE = ReplacingMergeTree
ORDER BY (account_id, event_id, kind);

-- Late outcomes: chargebacks, analyst verdicts, defaults, repayments.
CREATE TABLE IF NOT EXISTS labels (
    event_id    String,
    stream      LowCardinality(String),
    label       LowCardinality(String),
    is_positive UInt8,
    label_time  DateTime64(3, 'UTC'),
    entity_id   String,
    source      LowCardinality(String),
    merchant_id String,                    -- of the labelled event, when the label says
    terminal_id String,
    event_time  DateTime64(3, 'UTC')       -- of the labelled event (label_time when unknown)
) ENGINE = ReplacingMergeTree(label_time)
ORDER BY (stream, event_id, label);

-- Columns added after the first release: existing data directories get them too.
ALTER TABLE labels ADD COLUMN IF NOT EXISTS merchant_id String;
ALTER TABLE labels ADD COLUMN IF NOT EXISTS terminal_id String;
ALTER TABLE labels ADD COLUMN IF NOT EXISTS event_time DateTime64(3, 'UTC');
ALTER TABLE positions ADD COLUMN IF NOT EXISTS desk LowCardinality(String);
ALTER TABLE loan_applications ADD COLUMN IF NOT EXISTS attributes String;
ALTER TABLE decisions ADD COLUMN IF NOT EXISTS granted Nullable(Float64);
-- The retrained trees' probability in shadow (fraud_challenger=shadow; nan without a model)
ALTER TABLE decisions ADD COLUMN IF NOT EXISTS challenger_score Float32 DEFAULT nan;
ALTER TABLE decisions ADD COLUMN IF NOT EXISTS challenger_version LowCardinality(String) DEFAULT '';

-- Rolling model quality from labels, and drift.
CREATE TABLE IF NOT EXISTS model_quality (
    measured_at   DateTime64(3, 'UTC'),
    model_version String,
    metric        LowCardinality(String),
    window        LowCardinality(String),
    value         Float64,
    n_labels      UInt64
) ENGINE = ReplacingMergeTree
ORDER BY (model_version, metric, window, measured_at);

-- Market risk per portfolio, at most once per refresh interval (event time); VaR and ES are
-- one-day losses (positive) from filtered historical simulation, NULL until 20 days of history.
CREATE TABLE IF NOT EXISTS portfolio_risk (
    portfolio_id  String,
    desk          LowCardinality(String),
    measured_at   DateTime64(3, 'UTC'),
    value         Float64,
    pnl_day       Float64,
    drawdown      Float64,
    gross         Float64,
    net           Float64,
    concentration Float64,                 -- largest single-name share of the gross
    var_95        Nullable(Float64),
    var_99        Nullable(Float64),
    es_95         Nullable(Float64),
    es_99         Nullable(Float64),
    model         LowCardinality(String)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(measured_at)
ORDER BY (portfolio_id, measured_at);

-- Limit utilisation: a row when a limit's state changes (ok / near / breach / cleared).
CREATE TABLE IF NOT EXISTS limit_utilisation (
    entity_type    LowCardinality(String),  -- portfolio | desk | instrument
    entity_id      String,
    limit_id       String,
    metric         LowCardinality(String),
    value          Float64,
    limit_value    Float64,
    utilisation    Float64,
    state          LowCardinality(String),
    measured_at    DateTime64(3, 'UTC'),
    limits_version String
) ENGINE = ReplacingMergeTree
ORDER BY (entity_type, entity_id, limit_id, measured_at);

-- Who changed what, when and from where (riskstream.rules.audit): every publication,
-- approval or rejection of a rule set, limit set or credit policy, the thresholds each worker
-- started with, and models taking over from their cold start. Never updated, only added to.
CREATE TABLE IF NOT EXISTS audit (
    audit_id       String,
    change_id      String,
    at             DateTime64(3, 'UTC'),
    actor          LowCardinality(String),
    action         LowCardinality(String),
    subject        LowCardinality(String),
    version        String,
    content_sha256 String,
    diff           String,
    origin         String,
    detail         String
) ENGINE = ReplacingMergeTree(at)
ORDER BY audit_id;
