"""`riskstream models list|promote|rollback`: the fraud model versions, and which one decides.

Versions are the retrained trees the workers registered (``streams.model_registry``) and
``online``, the online logistic regression. ``promote VERSION`` pins a version for every
worker through the control topic (audited; with ``RISKSTREAM_REQUIRE_APPROVAL`` it waits for a
second person: ``riskstream rules approve``); ``promote auto`` lets the comparisons on settled
decisions choose again; ``rollback`` pins the model that decided before the one deciding now.
"""

from __future__ import annotations

import argparse
import sys
import time

import orjson

from riskstream.settings import load_settings


def _registry(settings):
    from riskstream.sinks.kafka import connect_redis
    from riskstream.streams.model_registry import ModelRegistry

    return ModelRegistry(connect_redis(settings))


def _in_force(settings) -> dict | None:
    from riskstream.rules.publishing import FRAUD_MODEL_KEY, rule_history

    history = rule_history(settings, key=FRAUD_MODEL_KEY)
    return history[-1] if history else None


def _day(ms) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ms / 1000)) if ms else "?"


def _list(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    registry = _registry(settings)
    versions, champions, pinned = registry.versions(), registry.champions(10), _in_force(settings)
    if args.json:
        print(orjson.dumps({"versions": versions, "champions": champions, "pinned": pinned}).decode())
        return 0
    deciding = champions[0]["version"] if champions else None
    print(f"Fraud model versions ({len(versions)} registered; 'online' is the online logistic regression):")
    print(f"  {'version':<28} {'trained on (event day)':<22} {'decisions':>10} {'frauds':>7}  "
          f"{'AP / CP@100 vs online at its comparison':<40}")
    for v in versions:
        cmp = v.get("comparison") or {}
        lead = (f"{cmp['challenger']['average_precision']:.3f} / {cmp['challenger']['card_precision_at_100']:.3f} vs "
                f"{cmp['champion']['average_precision']:.3f} / {cmp['champion']['card_precision_at_100']:.3f}"
                if cmp else "not compared yet")
        mark = "  <- decides" if v["version"] == deciding else ""
        print(f"  {v['version']:<28} {_day(v.get('trained_at_ms')):<22} {v.get('decisions', 0):>10,} "
              f"{v.get('frauds', 0):>7,}  {lead}{mark}")
    print(f"  {'online':<28} {'(learns continuously)':<22}" + ("  <- decides" if deciding == "online" else ""))
    if pinned and pinned["version"] != "auto":
        print(f"Pinned to {pinned['version']} by {pinned.get('published_by', '?')} at {pinned.get('published_at', '?')}"
              " (automatic promotion waits; `riskstream models promote auto` releases it).")
    else:
        print("Choice: automatic (the trees decide once they lead the online model on settled decisions).")
    if champions:
        print("Which model decided, newest first:")
        for c in champions:
            print(f"  {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(c['at']))}  {c['version']:<28} "
                  f"{c['how']:<7} {c['worker']}")
    else:
        print("No model has decided yet (cold start: rules and the anomaly score decide).")
    print("Next: riskstream models promote VERSION | riskstream models rollback; "
          "riskstream evaluate compares the models on settled labels.")
    return 0


def _promote(args: argparse.Namespace, version: str | None = None) -> int:
    from riskstream.rules.publishing import publish_fraud_champion

    settings = load_settings(args.config)
    registry = _registry(settings)
    version = version or args.version
    if version not in ("online", "auto") and registry.get(version) is None:
        known = ", ".join(v["version"] for v in registry.versions()[-5:]) or "none yet"
        print(f"riskstream models: no version {version!r} in the registry (newest: {known}; also 'online', 'auto'). "
              "See `riskstream models list`.", file=sys.stderr)
        return 2
    record = publish_fraud_champion(settings, version, reason=args.reason, who=args.who)
    if record.get("pending"):
        print(f"proposed: fraud model {version} (change {record['change_id']}); it waits for a second person: "
              f"riskstream rules approve {record['change_id']}")
    else:
        print(f"published: fraud model {version} decides on every worker from its next batch (audited as "
              f"{record['published_by']}). Check: riskstream models list")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    previous = _registry(settings).previous_champion()
    if previous is None:
        print("riskstream models: no earlier model decided; nothing to roll back to (see `riskstream models list`).",
              file=sys.stderr)
        return 2
    print(f"rolling back to {previous}, the model that decided before")
    return _promote(args, previous)


def register(sub) -> None:
    p = sub.add_parser("models", help="Fraud model versions: list them, promote one, roll back.")
    msub = p.add_subparsers(dest="models_command", required=True)
    s = msub.add_parser("list", help="registered versions, what they were trained on, which one decides")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(run=_list)
    for name, run, help_text in (("promote", _promote, "make VERSION decide on every worker (online, auto, "
                                                      "or a registered tree version)"),
                                 ("rollback", _rollback, "make the model that decided before decide again")):
        s = msub.add_parser(name, help=help_text)
        if name == "promote":
            s.add_argument("version")
        s.add_argument("--reason", default="", help="why (stored with the change and in the audit table)")
        s.add_argument("--as", dest="who", help="who is acting (default: RISKSTREAM_OPERATOR, else the login)")
        s.set_defaults(run=run)
