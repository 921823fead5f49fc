"""`riskstream demo`: the whole engine on the embedded stack, in one command.

Starts the broker, Valkey and the ClickHouse sink; simulates a realistic mixed stream
(card transactions with injected fraud, market ticks, positions, loan applications, delayed
labels, and a few malformed records); runs a Faust worker; shows live progress; stops
everything cleanly and prints a summary with the queries to look further.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from riskstream.schemas.events import DAY_MS, json_documents
from riskstream.schemas.pan import luhn_valid
from riskstream.settings import Settings
from riskstream.stack import EmbeddedStack, _die_with_parent


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class DemoStream:
    """Messages in event-time order: (topic name, key, value)."""

    messages: list[tuple[str, bytes, bytes]]
    transactions: int
    loan_applications: int
    malformed: int
    counts: dict[str, int]
    fraud: int


def malformed_records(at_ms: int) -> list[bytes]:
    """Bad input a real feed produces, timed near ``at_ms``; each must end in the dead-letter table."""
    good = {"transaction_id": "bad-0", "event_time": at_ms - 1000, "card_id": "c-x", "merchant_id": "m-x",
            "amount": 10.0}
    return [
        b"{not json",
        b"[1, 2, 3]",
        orjson.dumps({k: v for k, v in good.items() if k != "amount"} | {"transaction_id": "bad-1"}),
        orjson.dumps(good | {"transaction_id": "bad-2", "amount": "ten"}),
        orjson.dumps(good | {"transaction_id": "bad-3", "amount": -5}),
        orjson.dumps(good | {"transaction_id": "bad-4", "amount": 1e12}),
        orjson.dumps(good | {"transaction_id": "bad-5", "event_time": (at_ms - 1000) // 1000}),
        orjson.dumps(good | {"transaction_id": "bad-6", "merchant_id": None}),
        # A malformed record that carries a card number: it is dead-lettered with the PAN masked.
        orjson.dumps({"transaction_id": "bad-7", "pan": "4111111111111111", "amount": "x"}),
        orjson.dumps(good | {"transaction_id": "bad-8", "note": "x" * 70_000}),
    ]


# Market ticks start this many days before the transactions, so that portfolio VaR has the
# 20 days of history it needs from the first transaction on.
MARKET_HISTORY_DAYS = 30
DEMO_PORTFOLIO = "PF-DEMO"
# The demo's limits: a stop on each portfolio's gross exposure and its 99% VaR, and the gross
# of one demonstration portfolio that buys far too much mid-stream and sells it later.
DEMO_LIMITS = """\
version: demo
near_utilisation: 0.8
limits:
  - {id: demo-gross, scope: portfolio, entity: PF-DEMO, metric: gross, limit: 5e6, action: block_new_risk}
  - {id: portfolio-var, scope: portfolio, entity: "*", metric: var_99, limit: 1.5e5, action: alert_only}
"""


def demo_desk_trades(sim, start_ms: int, end_ms: int) -> list[dict]:
    """A portfolio of the first instrument that trades over its limit a third of the way in
    and back under it at two thirds: a breach, a control in Redis and its clearance."""
    if not len(sim.market.get("event_time", ())):
        return []
    ticks = sim.market
    name = ticks["instrument"][0]
    price = float(ticks["price"][np.flatnonzero(ticks["instrument"] == name)[-1]])
    span = end_ms - start_ms
    return [{"portfolio_id": DEMO_PORTFOLIO, "instrument": name, "event_time": int(start_ms + f * span),
             "quantity": round(value / price, 4), "price": price, "desk": "demo"}
            for f, value in ((0.05, 2e6), (0.33, 8e6), (0.66, 1e6))]


def demo_credit_line(tx: dict, start_ms: int, end_ms: int) -> list[dict]:
    """The busiest customer gets a credit line worth 40% of what their cards will spend, and
    repays a third of it half-way: near-limit reviews, over-limit declines, then room again."""
    customers, counts = np.unique(tx["customer_id"], return_counts=True)
    if not len(customers):
        return []
    who = str(customers[np.argmax(counts)])
    limit = round(0.4 * float(tx["amount"][tx["customer_id"] == who].sum()), 2)
    mid = int(start_ms + (end_ms - start_ms) / 2)
    return [{"event_id": "demo-line-open", "event_time": start_ms, "account_id": who, "kind": "limit_change",
             "amount": limit, "source": "riskstream demo"},
            {"event_id": "demo-line-repay", "event_time": mid, "account_id": who, "kind": "repayment",
             "amount": round(limit / 3, 2), "source": "riskstream demo"}]


def build_stream(n_transactions: int, seed: int = 7, progress=_say, start_ms: int | None = None) -> DemoStream:
    """The demo's messages, in time order. ``start_ms``: when the stream starts (the same
    start gives the same stream); by default weeks before now, ending an hour ago, so the
    stream moves with the clock and runs a day apart see different traffic."""
    from riskstream.simulate import simulate

    # Eight weeks: chargebacks take 2-30 days, so a fraud model needs weeks of settled labels
    # to show what it does; over 14 days it warmed up on day 6 and half the frauds never got
    # a label (docs/model-quality.md, the demo).
    days = 56 if n_transactions >= 20_000 else 7
    customers = max(50, int(n_transactions / (days * 2.2)) + 1)
    terminals = max(20, customers // 4)
    fixed_start = start_ms is not None
    now_ms = int(time.time() * 1000)
    start_ms = int(start_ms) if fixed_start else now_ms - days * DAY_MS - 3_600_000
    progress(f"simulating {days} days of {customers:,} customers at {terminals:,} terminals ...")
    sim = simulate(days=days, customers=customers, terminals=terminals, seed=seed, start_ms=start_ms,
                   market_history_days=MARKET_HISTORY_DAYS, progress=lambda s: progress(f"  {s}"))
    tx = sim.transactions
    # Top up with more days if the simulated volume fell short, then keep exactly n.
    while len(tx["amount"]) < n_transactions:
        days += 7
        if not fixed_start:
            start_ms = now_ms - days * DAY_MS - 3_600_000
        sim = simulate(days=days, customers=customers, terminals=terminals, seed=seed, start_ms=start_ms,
                       market_history_days=MARKET_HISTORY_DAYS)
        tx = sim.transactions
    keep = slice(0, n_transactions)
    tx = {k: v[keep] for k, v in tx.items()}
    end_ms = int(tx["event_time"][-1])
    kept_ids = set(tx["transaction_id"].tolist())

    entries: list[tuple[int, str, bytes, Any]] = []  # (time, topic, key, record; its JSON below)
    tx_cols = [c for c in tx if c not in ("is_fraud", "fraud_scenario")]
    for row in zip(*(tx[c].tolist() for c in tx_cols)):
        rec = dict(zip(tx_cols, row))
        key = rec["card_id"].encode()
        pan = demo_pan(rec["card_id"])
        if pan:  # some terminals send the card number itself: tokenized at ingress
            rec["pan"] = pan
            del rec["card_id"]
        entries.append((rec["event_time"], "transactions", key, rec))

    lab = sim.labels
    # Chargebacks name the merchant, terminal and date of the payment.
    tx_info = dict(zip(tx["transaction_id"].tolist(),
                       zip(tx["merchant_id"].tolist(), tx["terminal_id"].tolist(), tx["event_time"].tolist())))
    for row in zip(*(lab[c].tolist() for c in lab)):
        rec = dict(zip(lab, row))
        if rec["label_time"] > end_ms:
            continue  # not known yet at the end of the stream
        if rec["stream"] == "transactions":
            if rec["event_id"] not in kept_ids:
                continue
            rec["entity_id"] = demo_pan(rec["entity_id"]) or rec["entity_id"]  # the chargeback names the card
            rec["merchant_id"], rec["terminal_id"], rec["event_time"] = tx_info[rec["event_id"]]
        entries.append((rec["label_time"], "labels", str(rec.get("entity_id", "")).encode(), rec))

    counts = {"transactions": n_transactions}
    for name, key_col in (("market", "instrument"), ("positions", "portfolio_id"), ("loan_applications", "customer_id")):
        cols = getattr(sim, name)
        if not cols:
            continue
        times = cols["event_time"]
        sel = np.flatnonzero(times <= end_ms)
        names = list(cols)
        n = 0
        for i in sel.tolist():
            rec = {c: cols[c][i].item() if hasattr(cols[c][i], "item") else cols[c][i] for c in names}
            entries.append((rec["event_time"], name, str(rec[key_col]).encode(), rec))
            n += 1
        counts[name] = n
    for rec in demo_desk_trades(sim, start_ms, end_ms):
        entries.append((rec["event_time"], "positions", rec["portfolio_id"].encode(), rec))
        counts["positions"] = counts.get("positions", 0) + 1
    for rec in demo_credit_line(tx, int(tx["event_time"][0]), end_ms):
        entries.append((rec["event_time"], "account_events", rec["account_id"].encode(), rec))
        counts["account_events"] = counts.get("account_events", 0) + 1
    counts["labels"] = sum(1 for e in entries if e[1] == "labels")
    values = json_documents(e[3] for e in entries)
    entries = [(t, topic, key, value) for (t, topic, key, _), value in zip(entries, values)]
    bad = malformed_records(end_ms)  # times of the stream: the same stream from the same start
    for j, value in enumerate(bad):
        t = int(tx["event_time"][min(len(tx["event_time"]) - 1, (j + 1) * n_transactions // (len(bad) + 1))])
        entries.append((t, "transactions", f"bad-{j}".encode(), value))
    entries.sort(key=lambda e: e[0])
    return DemoStream(
        messages=[(t, k, v) for _, t, k, v in entries],
        transactions=n_transactions,
        loan_applications=counts.get("loan_applications", 0),
        malformed=len(bad),
        counts=counts,
        fraud=int(np.sum(tx["is_fraud"])),
    )


def demo_pan(card_id: str, share: int = 20) -> str | None:
    """A card number for one card in ``share`` (a Visa-like 16-digit number with a valid
    check digit, the same for the card every time), else None."""
    digest = hashlib.sha256(card_id.encode()).digest()
    if digest[0] % share:
        return None
    body = "4" + str(int.from_bytes(digest[1:9], "big"))[:14].rjust(14, "0")
    for check in "0123456789":
        if luhn_valid(body + check):
            return body + check
    return None


class DecisionCounter:
    """Counts decisions and alerts as they arrive on the output topics."""

    def __init__(self, settings: Settings):
        from confluent_kafka import Consumer, TopicPartition

        self.consumer = Consumer({**settings.kafka_client_config(), "group.id": f"demo-{os.getpid()}",
                                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
        parts = []
        for name in ("decisions", "alerts", "dead_letters"):
            topic = settings.topic(name)
            meta = self.consumer.list_topics(topic, timeout=10).topics[topic]
            parts += [TopicPartition(topic, p, 0) for p in meta.partitions]
        self.consumer.assign(parts)
        self.topics = {settings.topic(n): n for n in ("decisions", "alerts", "dead_letters")}
        self.counts = {"transactions": 0, "loan_applications": 0, "alerts": 0, "dead_letters": 0}
        self.decisions: dict[str, int] = {}

    def poll(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for m in self.consumer.consume(10000, timeout=0.1):
                if m.error():
                    continue
                kind = self.topics[m.topic()]
                if kind == "decisions":
                    d = orjson.loads(m.value())
                    self.counts[d["stream"]] = self.counts.get(d["stream"], 0) + 1
                    self.decisions[d["decision"]] = self.decisions.get(d["decision"], 0) + 1
                else:
                    self.counts[kind] += 1

    def close(self) -> None:
        self.consumer.close()


def start_worker(settings: Settings, stack_state: dict, index: int = 0) -> subprocess.Popen:
    env = dict(os.environ)
    env.update({"RISKSTREAM_KAFKA_BOOTSTRAP": stack_state["kafka"],
                "RISKSTREAM_REDIS_URL": stack_state["redis"],
                "RISKSTREAM_DATA_DIR": str(settings.data_dir.resolve()),
                # A name per worker slot: exactly once, a restarted worker fences its predecessor.
                "RISKSTREAM_WORKER_NAME": f"worker-{index}"})
    if settings.limits_file:
        env["RISKSTREAM_LIMITS_FILE"] = settings.limits_file
    for name, share in DEMO_BUDGETS.items():  # thresholds from a review capacity, unless set
        env.setdefault(name, str(share))
    log = settings.data_dir.resolve() / "logs" / f"worker-{index}.log"
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "riskstream", "worker"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)


def stop_worker(proc: subprocess.Popen, timeout: float = 10.0) -> float:
    """SIGTERM (a graceful, flushed stop), SIGKILL after ``timeout``; returns the seconds taken."""
    from riskstream.stack import stop_process

    t0 = time.monotonic()
    stop_process(proc, timeout)
    return time.monotonic() - t0


def run_demo(settings: Settings, events: int, seconds: float, workers: int = 1, start_ms: int | None = None) -> int:
    from confluent_kafka import Producer

    from riskstream.sinks.clickhouse import run_query

    stream = build_stream(events, start_ms=start_ms)
    _say(f"stream ready: {stream.transactions:,} transactions ({stream.fraud:,} fraudulent), "
         + ", ".join(f"{v:,} {k}" for k, v in stream.counts.items() if k != "transactions")
         + f", {stream.malformed} malformed records")
    limits_file = settings.data_dir.resolve() / "demo-limits.yaml"
    limits_file.parent.mkdir(parents=True, exist_ok=True)
    limits_file.write_text(DEMO_LIMITS)
    settings = settings.model_copy(update={"limits_file": str(limits_file)})
    stack = EmbeddedStack(settings)
    _say("starting the embedded stack ...")
    stack.start(progress=lambda s: _say(f"  {s}"))
    try:
        state = settings.stack_state()
        client_settings = settings.model_copy(update={"kafka_bootstrap": state["kafka"]})
        # The demo's tables hold this run only, so counts below mean this run.
        for table in ("decisions", "alerts", "limits", "dead_letters", "transactions", "labels",
                      "market_ticks", "positions", "loan_applications", "model_quality", "portfolio_risk",
                      "limit_utilisation"):
            run_query(settings, f"TRUNCATE TABLE IF EXISTS {table}")
        procs = [start_worker(settings, state, i) for i in range(workers)]
        _say(f"started {workers} worker(s); logs in {settings.data_dir.resolve() / 'logs'}")
        counter = DecisionCounter(client_settings)
        producer = Producer({**client_settings.kafka_client_config(), "linger.ms": 5,
                             "queue.buffering.max.messages": 2_000_000, "compression.type": "lz4"})
        expected = stream.transactions + stream.loan_applications
        produced = 0
        t0 = time.monotonic()
        pace = (len(stream.messages) / seconds) if seconds else 0.0
        last_print = t0
        last_decided = 0
        it = iter(stream.messages)
        done_producing = False
        deadline_stall = 120.0
        last_progress_at = time.monotonic()
        first_decision_at: float | None = None
        while True:
            # Produce what is due (all at once without --seconds).
            due = len(stream.messages) if not pace else int((time.monotonic() - t0) * pace)
            while not done_producing and produced < due:
                try:
                    topic, key, value = next(it)
                except StopIteration:
                    done_producing = True
                    producer.flush(30)
                    break
                try:
                    producer.produce(client_settings.topic(topic), value=value, key=key)
                except BufferError:
                    producer.poll(0.05)
                    producer.produce(client_settings.topic(topic), value=value, key=key)
                produced += 1
                if produced % 20000 == 0:
                    producer.poll(0)
            if produced >= len(stream.messages) and not done_producing:
                done_producing = True
                producer.flush(30)
            counter.poll(0.25)
            decided = counter.counts["transactions"] + counter.counts["loan_applications"]
            now = time.monotonic()
            if decided and first_decision_at is None:
                first_decision_at = now
            if decided != last_decided:
                last_progress_at = now
            if now - last_print >= 1.0 or decided >= expected:
                rate = (decided - last_decided) / max(1e-6, now - last_print)
                _say(f"[{now - t0:6.1f}s] produced {produced:>9,} | decided {decided:>9,}/{expected:,} "
                     f"({rate:>8,.0f}/s) | alerts {counter.counts['alerts']:>7,} | dead letters "
                     f"{counter.counts['dead_letters']:>3} | lag {expected - decided:>9,}")
                last_print, last_decided = now, decided
            if decided >= expected and done_producing:
                break
            if now - last_progress_at > deadline_stall:
                _say(f"no progress for {deadline_stall:.0f}s; stopping. Look at the worker log in "
                     f"{settings.data_dir.resolve() / 'logs'}")
                break
            if any(p.poll() is not None for p in procs):
                _say(f"a worker exited (code {[p.poll() for p in procs]}); see {settings.data_dir.resolve() / 'logs'}")
                break
        elapsed = time.monotonic() - t0
        deciding = time.monotonic() - (first_decision_at or t0)
        counter.poll(1.0)
        producer.flush(10)
        del producer  # before the broker stops: a client left behind logs connection failures
        # Wait until ClickHouse holds what the topic shows.
        stored = _wait_stored(settings, expected)
        stop_s = max(stop_worker(p) for p in procs)
        counter.close()
        summary = run_query(settings, "SELECT stream, decision, count() AS n, round(avg(score), 3) AS avg_score "
                            "FROM decisions FINAL GROUP BY stream, decision ORDER BY stream, n DESC").decode()
        alerts = run_query(settings, "SELECT severity_level, count() AS n, round(sum(amount_at_risk)) AS amount "
                           "FROM alerts FINAL GROUP BY severity_level ORDER BY n DESC").decode()
        dead = int(run_query(settings, "SELECT count() FROM dead_letters FINAL", "tsv").split()[-1])
        market = _market_summary(settings, stream.counts.get("market", 0))
        credit = _credit_summary(settings)
        fraud = _fraud_summary(settings)
    finally:
        stack.stop()
    decided = counter.counts["transactions"] + counter.counts["loan_applications"]
    ok = stored == expected and dead >= stream.malformed
    _say("")
    print(f"riskstream demo: {stream.transactions:,} transactions and {stream.loan_applications:,} loan applications "
          f"decided in {elapsed:.1f}s with {workers} worker(s): {elapsed - deciding:.1f}s of worker start-up "
          f"(imports, compiled kernels, consumer group join), then {decided / max(deciding, 1e-6):,.0f} decisions/s.")
    print(f"ClickHouse: {stored:,} decisions stored for {expected:,} decided events "
          f"({'exactly one each' if stored == expected else 'MISMATCH'}); {dead} dead letters "
          f"({stream.malformed} malformed records injected). Worker stopped in {stop_s:.1f}s.")
    print("\nDecisions:\n" + summary + "Alerts:\n" + alerts + fraud + credit + market)
    print(f"Data: {settings.data_dir.resolve()}. Look further with, for example:\n"
          '  riskstream sql "SELECT decision, count() FROM decisions FINAL GROUP BY decision"\n'
          '  riskstream sql "SELECT event_id, score, reasons FROM decisions FINAL WHERE decision = \'decline\' LIMIT 5"\n'
          '  riskstream sql "SELECT error, payload FROM dead_letters FINAL"\n'
          '  riskstream sql "SELECT portfolio_id, measured_at, value, var_99, es_99 FROM portfolio_risk FINAL '
          'ORDER BY measured_at DESC LIMIT 10"\n'
          "  riskstream evaluate   (fraud model quality against the labels; --stream loan_applications for credit)")
    return 0 if ok else 1


def _market_summary(settings: Settings, ticks: int, timeout: float = 60.0) -> str:
    """Once the market stream is in: the portfolios nearest their VaR limit, and the demo
    portfolio's limit going to breach and back (with its control issued and cleared)."""
    from riskstream.sinks.clickhouse import run_query

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if int(run_query(settings, "SELECT count() FROM market_ticks", "tsv").split()[-1]) >= ticks:
            break
        time.sleep(0.5)
    top = run_query(settings, "SELECT portfolio_id, round(argMax(var_99, measured_at)) AS latest_var_99, "
                    "round(argMax(gross, measured_at)) AS latest_gross, round(latest_var_99 / 150000, 2) "
                    "AS var_utilisation FROM portfolio_risk FINAL WHERE isNotNull(var_99) GROUP BY portfolio_id "
                    "ORDER BY var_utilisation DESC LIMIT 5").decode()
    states = run_query(settings, "SELECT measured_at, entity_id, limit_id, state, round(utilisation, 2) AS utilisation "
                       f"FROM limit_utilisation FINAL WHERE entity_id = '{DEMO_PORTFOLIO}' ORDER BY measured_at").decode()
    controls = run_query(settings, "SELECT entity_id, action, reason FROM limits FINAL WHERE entity_type = 'portfolio' "
                         "ORDER BY issued_at").decode()
    return ("Market risk: portfolios nearest their 99% VaR limit (150,000):\n" + top
            + f"{DEMO_PORTFOLIO}'s limits (it buys past its gross limit, then sells):\n" + states
            + "Portfolio controls (Redis rs:limit:portfolio:<id> and the limits topic):\n" + controls)


# The demo's review queue and step-up capacity, as shares of a day's transactions: the model's
# thresholds follow from them (streams.alert_budget).
DEMO_BUDGETS = {"RISKSTREAM_REVIEW_BUDGET": 0.005, "RISKSTREAM_STEP_UP_BUDGET": 0.012}

# Friction and recall of the fraud side after the first week: legit transactions (no fraud label)
# stepped up or worse by anything but the credit line, and labelled frauds stopped.
FRICTION_SQL = """
WITH (SELECT min(event_time) FROM decisions FINAL WHERE stream = 'transactions') AS t0
SELECT countIf(d.decision != 'approve' AND NOT l.is_positive AND NOT arrayExists(
           r -> startsWith(r, 'OVER_LIMIT') OR startsWith(r, 'NEAR_LIMIT'), d.reasons)) / countIf(NOT l.is_positive) AS friction,
       countIf(d.decision != 'approve' AND l.is_positive) / countIf(l.is_positive) AS recall,
       countIf(l.is_positive) AS frauds
FROM decisions AS d FINAL
LEFT JOIN (SELECT event_id, max(is_positive) AS is_positive FROM labels FINAL GROUP BY event_id) AS l
  ON d.event_id = l.event_id
WHERE d.stream = 'transactions' AND d.event_time >= t0 + INTERVAL 7 DAY
"""


def _fraud_summary(settings: Settings) -> str:
    """How the fraud model did on the labels that came back: when it took over from the
    rules, how it ranked since, and the friction and recall of the fraud decisions."""
    from datetime import date

    from riskstream.detectors.evaluate import evaluate
    from riskstream.sinks.clickhouse import run_query

    r = evaluate(settings, date(2000, 1, 1), date(2100, 1, 1))
    if not r["decisions"]:
        return ""
    cold = r.get("cold_start", {})
    m = r.get("models", {}).get("deciding model, after warm-up")
    if "model_from_day" not in cold:
        alone = f"decided alone for all {r['days']} days: the model was still warming up or proving itself."
    else:
        alone = (f"decided alone for the first {cold['model_from_day']} of {r['days']} days, while the model warmed "
                 "up and proved itself on settled labels.")
        if cold["several_models_note"]:
            alone += f" Then {cold['several_models_note']}."
    lines = [f"Fraud model: {r['frauds']:,} frauds labelled by the end of the stream; the rules and the anomaly score "
             + alone]
    if m:
        rb = m["review_budget"]
        lines.append(f"  since then: ROC AUC {m['roc_auc']:.3f}, average precision {m['average_precision']:.3f}, "
                     f"Card Precision@100 {m['card_precision_at_100']:.3f}; the top {rb['share']:.1%} of each day "
                     f"holds {rb['recall']:.0%} of the labelled frauds at precision {rb['precision']:.0%}.")
    row = orjson.loads(run_query(settings, FRICTION_SQL, "json").splitlines()[0])
    lines.append(f"  after the first week: {float(row['friction']):.2%} of legit transactions stepped up or worse by "
                 f"fraud rules and the model (budgets: review {DEMO_BUDGETS['RISKSTREAM_REVIEW_BUDGET']:.1%}, step-up "
                 f"{DEMO_BUDGETS['RISKSTREAM_STEP_UP_BUDGET']:.1%} a day); {float(row['recall']):.0%} of the "
                 f"{int(row['frauds']):,} labelled frauds stepped up or stopped. Per model and calibration: "
                 "riskstream evaluate")
    return "\n".join(lines) + "\n"


def _credit_summary(settings: Settings) -> str:
    """The loan decisions: approval rate, the PD against the outcomes known so far, and what
    the declines were for."""
    from datetime import date

    from riskstream.detectors.credit_evaluation import evaluate_credit
    from riskstream.sinks.clickhouse import run_query

    r = evaluate_credit(settings, date(2000, 1, 1), date(2100, 1, 1))
    if not r["decisions"]:
        return ""
    counts = ", ".join(f"{k} {v:,}" for k, v in sorted(r["decision_counts"].items()))
    lines = [f"Credit: {r['decisions']:,} loan applications ({counts}); approval rate {r['approval_rate']:.1%}."]
    if r.get("calibration"):
        lines.append(f"  PD against the {r['labelled']:,} outcomes known so far ({r['defaults']:,} defaults"
                     + (f", ROC AUC {r['roc_auc']:.3f}" if "roc_auc" in r else "") + "), by PD decile:")
        lines += [f"    PD {row['pd_from']:5.1%}-{row['pd_to']:5.1%}: predicted {row['mean_pd']:5.1%}, defaulted "
                  f"{row['default_rate']:5.1%} of {row['n']:,}" for row in r["calibration"]]
    import orjson

    declines = run_query(settings, "SELECT splitByString(':', reason)[1] AS why, count() AS n FROM decisions FINAL "
                         "ARRAY JOIN reasons AS reason WHERE stream = 'loan_applications' AND decision = 'decline' "
                         "AND NOT startsWith(reason, 'PD') AND position(reason, ':') > 0 GROUP BY why ORDER BY n DESC "
                         "LIMIT 5", "json")
    rules = ", ".join(f"{row['why']} {int(row['n']):,}" for row in map(orjson.loads, declines.splitlines()) if row)
    lines.append(f"  declines by policy rule: {rules or 'none'}; the rest by PD over the decline line.")
    used = orjson.loads(run_query(
        settings, "SELECT countIf(startsWith(r, 'OVER_LIMIT')) AS over, countIf(startsWith(r, 'NEAR_LIMIT')) AS near "
        "FROM decisions FINAL ARRAY JOIN reasons AS r WHERE stream = 'transactions'", "json").splitlines()[0])
    opened = int(run_query(settings, "SELECT count() FROM account_events FINAL WHERE kind = 'limit_change'",
                           "tsv").split()[-1])
    demo_line = [orjson.loads(r)["account_id"] for r in run_query(
        settings, "SELECT account_id FROM account_events FINAL WHERE event_id = 'demo-line-open'", "json").splitlines() if r]
    lines.append(f"  credit lines: {opened:,} opened or changed (approvals and the demo's line); card authorisations "
                 f"declined over their line: {int(used['over']):,}, sent to review near it: {int(used['near']):,}.")
    if demo_line:
        lines.append(f"  the demo's line, event by event: riskstream credit-line history {demo_line[-1]}")
    return "\n".join(lines) + "\n"


def _wait_stored(settings: Settings, expected: int, timeout: float = 60.0) -> int:
    from riskstream.sinks.clickhouse import run_query

    deadline = time.monotonic() + timeout
    stored = -1
    while time.monotonic() < deadline:
        stored = int(run_query(settings, "SELECT count() FROM decisions FINAL", "tsv").split()[-1])
        if stored >= expected:
            return stored
        time.sleep(0.5)
    return stored


