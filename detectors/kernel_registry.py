"""Every feature kernel with its plain reference, and how a batch is fed to both
(:data:`KERNELS`): the feature engine builds its plan from it, the parity tests and the
features bench run over it."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable

import numpy as np

from riskstream.detectors.kernel_references import (
    decayed_activity_reference,
    decayed_amount_profile_reference,
    decayed_fraud_rate_reference,
    distinct_recent_reference,
    geo_velocity_reference,
    novelty_recent_reference,
)
from riskstream.detectors.kernels import (
    DAY_MS,
    HOUR_MS,
    decayed_activity,
    decayed_amount_profile,
    decayed_fraud_rate,
    distinct_recent,
    geo_velocity,
    novelty_recent,
)


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepInput:
    """What one kernel call sees of a batch. ``keys`` are slots (int64, -1 absent) for the
    kernels and hashable ids (None absent) for the references."""

    keys: Any
    t_ms: np.ndarray
    amount: np.ndarray
    member_codes: np.ndarray | None = None
    lat: np.ndarray | None = None
    lon: np.ndarray | None = None
    label_keys: Any = None
    label_event_ms: np.ndarray | None = None
    label_time_ms: np.ndarray | None = None


@dataclass(frozen=True)
class KernelSpec:
    """One kernel, its reference, its state layout and its outputs, for a given parameter
    dict. ``run`` feeds a StepInput to the kernel (slots + state array), ``run_reference``
    to the reference (keys + dict); both write rows of ``out`` (n_outputs x n)."""

    name: str
    kernel: Callable
    reference: Callable
    outputs: Callable[[dict], tuple[str, ...]]
    state_layout: Callable[[dict], tuple[np.dtype, int, float]]  # dtype, row width, fill
    run: Callable[[dict, StepInput, np.ndarray, np.ndarray], int]
    run_reference: Callable[[dict, StepInput, dict, np.ndarray], int]


def _f64(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def _activity_outputs(p):
    return (("first_seen", "seconds_since_prev") + tuple(f"txn_count_{w}" for w in p["counts"])
            + tuple(f"amount_sum_{w}" for w in p["sums"]))


@functools.lru_cache(maxsize=64)
def _taus(names: tuple[str, ...]) -> np.ndarray:
    # cached: these tiny arrays were a visible share of the per-batch fixed cost
    taus = _f64([WINDOWS_MS[w] for w in names])
    taus.setflags(write=False)
    return taus


WINDOWS_MS = {"1h": HOUR_MS, "1d": DAY_MS, "7d": 7 * DAY_MS, "30d": 30 * DAY_MS}


def _run_activity(p, x, state, out):
    nc = len(p["counts"])
    if tuple(p["sums"]) != tuple(p["counts"][: len(p["sums"])]):
        raise ValueError("decayed_activity sums must use the first of its count windows")
    decayed_activity(x.keys, x.t_ms, x.amount, _taus(p["counts"]), len(p["sums"]), state,
                     out[0], out[1], out[2:2 + nc], out[2 + nc:])
    return 0


def _ref_activity(p, x, state, out):
    nc = len(p["counts"])
    decayed_activity_reference(x.keys, x.t_ms, x.amount, _taus(p["counts"]), _taus(p["sums"]), state,
                               out[0], out[1], out[2:2 + nc], out[2 + nc:])
    return 0


def _run_profile(p, x, state, out):
    decayed_amount_profile(x.keys, x.t_ms, x.amount, WINDOWS_MS[p["window"]], state, out[0], out[1], out[2], out[3])
    return 0


def _ref_profile(p, x, state, out):
    decayed_amount_profile_reference(x.keys, x.t_ms, x.amount, WINDOWS_MS[p["window"]], state,
                                     out[0], out[1], out[2], out[3])
    return 0


def _run_fraud(p, x, state, out):
    return decayed_fraud_rate(x.keys, x.t_ms, _taus(p["windows"]), x.label_keys, x.label_event_ms,
                              x.label_time_ms, state, out)


def _ref_fraud(p, x, state, out):
    return decayed_fraud_rate_reference(x.keys, x.t_ms, _taus(p["windows"]), x.label_keys, x.label_event_ms,
                                        x.label_time_ms, state, out)


def _run_distinct(p, x, state, out):
    distinct_recent(x.keys, x.t_ms, x.member_codes, np.int64(WINDOWS_MS[p["window"]] // 1000), state, out[0])
    return 0


def _ref_distinct(p, x, state, out):
    distinct_recent_reference(x.keys, x.t_ms, x.member_codes, int(WINDOWS_MS[p["window"]] // 1000), state,
                              out[0], p["k"])
    return 0


def _run_novelty(p, x, state, out):
    novelty_recent(x.keys, x.member_codes, state, out[0])
    return 0


def _ref_novelty(p, x, state, out):
    novelty_recent_reference(x.keys, x.member_codes, state, out[0], p["k"])
    return 0


def _run_geo(p, x, state, out):
    geo_velocity(x.keys, x.t_ms, x.lat, x.lon, state, out[0], out[1])
    return 0


def _ref_geo(p, x, state, out):
    geo_velocity_reference(x.keys, x.t_ms, x.lat, x.lon, state, out[0], out[1])
    return 0


def kernel_table(specs: tuple[KernelSpec, ...]) -> MappingProxyType:
    """Kernels by name, read-only; a name given twice raises."""
    table: dict[str, KernelSpec] = {}
    for spec in specs:
        if spec.name in table:
            raise ValueError(f"kernel {spec.name!r} listed twice")
        table[spec.name] = spec
    return MappingProxyType(table)


# Every kernel, with its plain reference: the parity tests and bench/features_bench read this.
KERNELS = kernel_table((
    KernelSpec(
        "decayed_activity", decayed_activity, decayed_activity_reference, _activity_outputs,
        lambda p: (np.dtype(np.float64), 1 + len(p["counts"]) + len(p["sums"]), 0.0),
        _run_activity, _ref_activity),
    KernelSpec(
        "decayed_amount_profile", decayed_amount_profile, decayed_amount_profile_reference,
        lambda p: tuple(f"amount_{f}_{p['window']}" for f in ("mean", "std", "zscore", "ratio")),
        lambda p: (np.dtype(np.float64), 4, 0.0), _run_profile, _ref_profile),
    KernelSpec(
        "decayed_fraud_rate", decayed_fraud_rate, decayed_fraud_rate_reference,
        lambda p: tuple(f"fraud_rate_{w}" for w in p["windows"]),
        lambda p: (np.dtype(np.float64), 1 + 2 * len(p["windows"]), 0.0), _run_fraud, _ref_fraud),
    KernelSpec(
        "distinct_recent", distinct_recent, distinct_recent_reference,
        lambda p: (f"distinct_{p['member']}s_{p['window']}",),
        lambda p: (np.dtype(np.int32), 2 * p["k"], 0), _run_distinct, _ref_distinct),
    KernelSpec(
        "novelty_recent", novelty_recent, novelty_recent_reference,
        lambda p: (f"new_{p['member']}",),
        lambda p: (np.dtype(np.int32), p["k"], 0), _run_novelty, _ref_novelty),
    KernelSpec(
        "geo_velocity", geo_velocity, geo_velocity_reference,
        lambda p: ("km_from_prev", "speed_kmh_from_prev"),
        lambda p: (np.dtype(np.float64), 3, 0.0), _run_geo, _ref_geo),
))


def fresh_state(spec: KernelSpec, params: dict, n_rows: int) -> np.ndarray:
    """A state array of n_rows never-seen entities (time column -inf where there is one)."""
    dtype, width, fill = spec.state_layout(params)
    state = np.full((n_rows, width), fill, dtype=dtype)
    if dtype == np.float64:
        state[:, 0] = -np.inf
    return state
