"""Seeded synthetic input streams: card transactions with labelled fraud, delayed labels,
market ticks, portfolio positions and loan applications.

The card model follows the well-known transaction-simulator design (Le Borgne et al.,
*Reproducible Machine Learning for Credit Card Fraud Detection*): customers and terminals
live on a 100x100 grid, a customer shops at terminals within a radius of home, amounts are
drawn around a per-customer mean, most activity falls in business hours and the week has a
shape (busy Friday/Saturday, quiet Sunday). On top of that:

* the grid is laid over central Europe (one unit is ~11 km), so every transaction has a real
  ``lat``/``lon`` and an ISO-2 ``country``; cities abroad host terminals for travellers and
  fraudsters;
* merchants own several terminals and have an MCC that sets the typical ticket; a customer has
  1-2 cards, 1-2 devices and a home ip, and sometimes travels (domestic or abroad);
* legit noise that overlaps with fraud on purpose: occasional big purchases, micro-payments,
  new devices, trips abroad, so that no single column gives the fraud away.

``amount`` is in the cardholder's billing currency (EUR) as on an issuer's authorisation feed;
``currency`` is the merchant's local currency. ``country``/``lat``/``lon`` are where the
payment happened: the terminal, or for ``ecom`` the geolocated ip.

Fraud scenarios (``fraud_scenario``; share of the fraud budget):

``card_testing`` (20%)
    a stolen card gets a burst of 3-15 ecom payments of 0-3 EUR within minutes, from a
    fraudster's device/ip, often (60%) followed by one large payment within two hours.
``compromised_terminal`` (25%)
    a POS terminal is compromised for 1-4 weeks (scaled down in spans under 12 weeks) and
    30-60% of its payments in that window are fraud, at normal amounts: only the terminal's
    fraud history gives them away.
``account_takeover`` (25%)
    for 1-4 days a card spends 3-10x its usual mean, online, from a new device and ip.
``high_amount`` (10%)
    an isolated payment of 5-15x the card's mean (near home or online).
``geo_impossible`` (20%)
    a cloned card is used 2-45 minutes after a genuine payment, hundreds of km away or in
    another country (the speed follows from ``lat``/``lon`` and ``event_time``).

Fraudsters reuse devices and ips across victims, as rings do.

Labels (the ``labels`` stream, what the bank learns and when):

* every fraudulent transaction gets a positive label: for 35% of the cases an analyst
  confirms it (``analyst_fraud``) 30 minutes to 2 days after the case's last payment; the
  rest come back as a ``chargeback`` 2-30 days later. A card-testing, takeover or cloning
  case is labelled as a whole when the card is blocked.
* a sample of legit traffic gets ``analyst_legit`` within 1-48 hours: 0.2% at random, 10% of
  what looks suspicious (amount > 3x the card's mean, foreign country, unknown device).
* loan outcomes (``default``/``repaid``, source ``bureau``) arrive 2-12 months after the
  application; spans shorter than two years run the bureau clock faster (delay x days/730),
  so that applications from the first half of the span have their outcome by its end.
* Labels whose ``label_time`` falls after the end of the span are dropped: the labels stream
  is what the engine would have seen by then. With the 2-30 day chargeback delay, a 7-day
  span labels about a third of its frauds, a 28-day span about 70%; ``is_fraud`` stays the
  full ground truth.

Speed, all streams on, measured on the shared 2-core build machine (numpy 2.4) with
``riskstream simulate --days D --customers C --terminals T --out x.parquet``:

* 7 days x 5,700 customers, 1,000 terminals: 99k transactions generated in 0.3 s (~300k/s);
  1.9 s for the whole command including the Parquet files;
* 28 days x 29,000 customers, 5,000 terminals: 2.04M transactions generated in 10.6 s wall
  (~190k/s; 7 s of CPU, the rest was other jobs on the machine), 0.74 GB peak RSS; writing
  the Parquet files adds ~10 s. Most of the time goes into Python ``str`` objects for the id
  columns, which ``TransactionBatch.from_columns`` wants.

Example
-------
>>> sim = simulate(days=3, customers=300, terminals=60, seed=1)
>>> tx = sim.transactions
>>> bool((np.diff(tx["event_time"]) >= 0).all()), set(np.unique(tx["channel"])) <= {"pos", "ecom", "atm"}
(True, True)
>>> sorted(sim.scenario_counts()) == sorted(SCENARIOS)
True
>>> import pathlib, tempfile
>>> written = write_simulation(sim, pathlib.Path(tempfile.mkdtemp()) / "tx.parquet")
>>> [p.name for p in written]  # doctest: +NORMALIZE_WHITESPACE
['tx.parquet', 'tx.labels.parquet', 'tx.market.parquet', 'tx.positions.parquet',
 'tx.loan_applications.parquet']

From the shell, the same with progress and a summary::

    riskstream simulate --days 3 --customers 300 --terminals 60 --seed 1 --out tx.parquet
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from riskstream.schemas.events import DAY_MS
from riskstream.sim_books import empty_columns, loan_book, market_ticks, trading_positions
from riskstream.sim_cards import card_labels, card_transactions
from riskstream.sim_world import (
    CHANNELS,
    COUNTRIES,
    CURRENCY,
    DEFAULT_FRAUD_RATE,
    DEFAULT_START_MS,
    LABEL_COLUMNS,
    LOAN_COLUMNS,
    MARKET_COLUMNS,
    MCCS,
    POSITION_COLUMNS,
    SCENARIO_NAMES,
    SCENARIOS,
    STREAM_COLUMNS,
    build_world,
    format_codes,
    scramble32,
    scramble64,
)


@dataclass
class Simulation:
    """All generated streams as columns (numpy arrays; strings are object arrays of ``str``)."""

    transactions: dict[str, np.ndarray]  # sorted by event_time
    labels: dict[str, np.ndarray]  # sorted by label_time
    market: dict[str, np.ndarray]
    positions: dict[str, np.ndarray]
    loan_applications: dict[str, np.ndarray]
    start_ms: int = DEFAULT_START_MS
    end_ms: int = DEFAULT_START_MS

    def streams(self) -> dict[str, dict[str, np.ndarray]]:
        return {name: getattr(self, name) for name in STREAM_COLUMNS}

    def scenario_counts(self) -> dict[str, int]:
        """Fraudulent transactions per scenario (every scenario listed, zero when absent)."""
        names, counts = np.unique(self.transactions["fraud_scenario"].astype(str), return_counts=True)
        found = dict(zip(names.tolist(), counts.tolist()))
        return {s: int(found.get(s, 0)) for s in SCENARIOS}


# ==========================================================================================
# public API
# ==========================================================================================
def simulate(days: int = 7, customers: int = 2000, terminals: int = 500, seed: int = 7,
             start_ms: int | None = None, fraud_rate: float | None = None,
             with_market: bool = True, with_credit: bool = True, market_history_days: int = 0,
             progress: Callable[[str], None] | None = None) -> Simulation:
    """Generate every input stream for ``days`` days from ``start_ms`` (default 2024-01-01 UTC).
    ``market_history_days`` starts the market ticks that many days earlier (the daily history
    that VaR is computed from); every other stream is the same with or without it.

    About 2.5 transactions per customer per day. ``fraud_rate`` (default 0.7%) is the target
    share of fraudulent transactions; at small sizes every scenario still gets at least one
    case, so the realised rate can be higher. Identical arguments give identical output; the
    transactions do not depend on ``with_market``/``with_credit``.
    """
    if days < 1:
        raise ValueError("days must be at least 1")
    if customers < 1:
        raise ValueError("customers must be at least 1")
    if terminals < 30:
        raise ValueError("terminals must be at least 30 (shops, ATMs, web shops and terminals abroad)")
    fraud_rate = DEFAULT_FRAUD_RATE if fraud_rate is None else float(fraud_rate)
    if not 0 <= fraud_rate <= 0.5:
        raise ValueError("fraud_rate must be between 0 and 0.5")
    start_ms = DEFAULT_START_MS if start_ms is None else int(start_ms)
    end_ms = start_ms + days * DAY_MS
    say = progress or (lambda message: None)
    # Independent streams per part, so switching market or credit off leaves the cards alone.
    rng_world, rng_tx, rng_labels, rng_market, rng_credit = np.random.default_rng(seed).spawn(5)

    w = build_world(rng_world, customers, terminals)
    say(f"world: {w.customers:,} customers, {w.cards:,} cards, {terminals:,} terminals")
    tx = card_transactions(rng_tx, w, start_ms, end_ms, fraud_rate, say)
    order = np.argsort(tx["t"], kind="stable")
    tx = {f: v[order] for f, v in tx.items()}
    n = len(tx["t"])
    say(f"{n:,} transactions, {int((tx['scenario'] > 0).sum()):,} fraudulent; building columns")

    salt = int(np.random.default_rng(seed).integers(0, 2**62))
    transaction_ids = np.array([f"tx-{seed}-{i:09d}" for i in range(n)], dtype=object)
    card_ids = format_codes(scramble64(np.arange(w.cards), salt), lambda v: f"card_{v:016x}")
    customer_ids = np.array([f"C{i:07d}" for i in range(customers)], dtype=object)
    terminal_ids = np.array([f"T{i:06d}" for i in range(terminals)], dtype=object)
    merchant_ids = np.array([f"M{i:06d}" for i in range(int(w.term_merchant.max()) + 1)], dtype=object)
    device_code = np.where(tx["device"] >= 0, scramble64(np.maximum(tx["device"], 0), salt + 1).astype(np.int64) & ((1 << 62) - 1), -1)
    ip_code = np.where(tx["ip"] >= 0, scramble32(np.maximum(tx["ip"], 0), salt).astype(np.int64), -1)
    term = tx["term"]
    transactions = {
        "transaction_id": transaction_ids,
        "event_time": tx["t"].astype(np.int64),
        "card_id": card_ids[tx["card"]],
        "customer_id": customer_ids[tx["cust"]],
        "terminal_id": terminal_ids[term],
        "merchant_id": merchant_ids[w.term_merchant[term]],
        "amount": np.round(tx["amount"], 2).astype(np.float64),
        "currency": np.array([CURRENCY[c] for c in COUNTRIES], dtype=object)[w.term_country[term]],
        "country": np.array(COUNTRIES, dtype=object)[tx["country"]],
        "channel": np.array(CHANNELS, dtype=object)[tx["channel"]],
        "mcc": np.array(MCCS, dtype=object)[w.term_mcc[term]],
        "device_id": format_codes(device_code, lambda v: f"dev_{v:015x}"),
        "ip": format_codes(ip_code, lambda v: f"{v >> 24}.{(v >> 16) & 255}.{(v >> 8) & 255}.{v & 255}"),
        "lat": np.round(tx["lat"], 5),
        "lon": np.round(tx["lon"], 5),
        "is_fraud": (tx["scenario"] > 0).astype(np.int8),
        "fraud_scenario": np.array(SCENARIO_NAMES, dtype=object)[tx["scenario"]],
    }
    labels = card_labels(rng_labels, w, tx, transaction_ids, card_ids, end_ms)

    loans = empty_columns(LOAN_COLUMNS)
    if with_credit:
        loans, loan_labels = loan_book(rng_credit, w, start_ms, end_ms, seed, customer_ids)
        labels = {k: np.concatenate([labels[k], loan_labels[k]]) for k in LABEL_COLUMNS}
        say(f"{len(loans['event_time']):,} loan applications")
    order = np.argsort(labels["label_time"], kind="stable")
    labels = {k: v[order] for k, v in labels.items()}

    market, positions = empty_columns(MARKET_COLUMNS), empty_columns(POSITION_COLUMNS)
    if with_market:
        market, series = market_ticks(rng_market, start_ms - market_history_days * DAY_MS, end_ms)
        positions = trading_positions(rng_market, series, customers, days)
        say(f"{len(market['event_time']):,} market ticks, {len(positions['event_time']):,} position updates")
    return Simulation(transactions=transactions, labels=labels, market=market, positions=positions,
                      loan_applications=loans, start_ms=start_ms, end_ms=end_ms)


# ==========================================================================================
# files
# ==========================================================================================
SUFFIXES = (".csv", ".parquet")


def stream_paths(out: str | Path) -> dict[str, Path]:
    """Where each stream goes: transactions at ``out``, the rest next to it as
    ``<stem>.<stream><suffix>``."""
    out = Path(out)
    if out.suffix not in SUFFIXES:
        raise ValueError(f"output must end in .csv or .parquet, got {out.name!r}")
    return {name: out if name == "transactions" else out.with_name(f"{out.stem}.{name}{out.suffix}")
            for name in STREAM_COLUMNS}


def _arrow_type(kind: str):
    import pyarrow as pa

    return {"str": pa.string(), "int64": pa.int64(), "int8": pa.int8(), "float64": pa.float64()}[kind]


def write_simulation(sim: Simulation, out: str | Path) -> list[Path]:
    """Write the streams as CSV or Parquet (by the suffix of ``out``); returns the paths written.
    Transactions and labels are always written, the other streams when they have rows."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    paths = stream_paths(out)
    written = []
    for name, columns in sim.streams().items():
        schema = STREAM_COLUMNS[name]
        if name not in ("transactions", "labels") and len(next(iter(columns.values()))) == 0:
            continue
        table = pa.table({col: pa.array(columns[col], type=_arrow_type(kind)) for col, kind in schema.items()})
        path = paths[name]
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".parquet":
            pq.write_table(table, path)
        else:
            pacsv.write_csv(table, path)
        written.append(path)
    return written


def read_stream(path: str | Path, stream: str) -> dict[str, np.ndarray]:
    """Read one stream written by :func:`write_simulation` back into numpy columns with the
    generator's dtypes (CSV needs the schema, or ``mcc`` would come back as a number)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    schema = STREAM_COLUMNS[stream]
    path = Path(path)
    if path.suffix == ".parquet":
        table = pq.read_table(path)
    else:
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
            column_types={col: _arrow_type(kind) for col, kind in schema.items()},
            strings_can_be_null=False, quoted_strings_can_be_null=False))
    out = {}
    for col, kind in schema.items():
        values = table.column(col).to_numpy(zero_copy_only=False)
        out[col] = values.astype(object) if kind == "str" else values.astype(kind)
    return out


def read_simulation(out: str | Path) -> Simulation:
    """The inverse of :func:`write_simulation`; streams without a file come back empty."""
    paths = stream_paths(out)
    streams = {name: read_stream(p, name) if p.exists() else empty_columns(STREAM_COLUMNS[name])
               for name, p in paths.items()}
    times = streams["transactions"]["event_time"]
    start = int(times.min()) if len(times) else DEFAULT_START_MS
    end = int(times.max()) + 1 if len(times) else DEFAULT_START_MS
    return Simulation(**streams, start_ms=start, end_ms=end)


# ==========================================================================================
# CLI
# ==========================================================================================
def summarize(sim: Simulation, written: list[Path] | None = None, seconds: float | None = None) -> str:
    tx, labels = sim.transactions, sim.labels
    n = len(tx["event_time"])
    n_fraud = int(tx["is_fraud"].sum())
    start = datetime.fromtimestamp(sim.start_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")
    days = (sim.end_ms - sim.start_ms) / DAY_MS
    took = f" in {seconds:.1f} s ({n / max(seconds, 1e-9):,.0f} transactions/s)" if seconds else ""
    lines = [f"simulated {days:g} days from {start} UTC{took}",
             f"  transactions       {n:>10,}  fraud {n_fraud:,} ({100 * n_fraud / max(n, 1):.2f}%)"]
    for scenario, count in sim.scenario_counts().items():
        lines.append(f"    {scenario:<22} {count:>8,}  ({100 * count / max(n, 1):.3f}%)")
    on_tx = labels["stream"] == "transactions"
    positive_tx = int((on_tx & (labels["is_positive"] == 1)).sum())
    lines.append(f"  labels             {len(labels['label_time']):>10,}  frauds labelled by the end of the span: "
                 f"{positive_tx:,} of {n_fraud:,}; analyst_legit {int((labels['label'] == 'analyst_legit').sum()):,}")
    if len(sim.market["event_time"]):
        lines.append(f"  market             {len(sim.market['event_time']):>10,}  "
                     f"ticks over {len(np.unique(sim.market['instrument'].astype(str)))} instruments")
        lines.append(f"  positions          {len(sim.positions['event_time']):>10,}")
    if len(sim.loan_applications["event_time"]):
        loan = labels["stream"] == "loan_applications"
        lines.append(f"  loan_applications  {len(sim.loan_applications['event_time']):>10,}  outcomes known: "
                     f"{int(loan.sum()):,} ({int((loan & (labels['is_positive'] == 1)).sum()):,} defaults)")
    if written:
        lines.append("wrote")
        lines.extend(f"  {p}" for p in written)
        lines.append(f"next: riskstream replay {written[0]} --stream transactions --label-column is_fraud "
                     f"--label-delay 7d --offline")
    return "\n".join(lines)


