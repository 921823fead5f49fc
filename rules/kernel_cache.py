"""Compiled rule kernels, cached: the generated source of a rule set's kernel is kept in the
user cache under its hash, so that numba's cache can key on it, and the rule sets used longest
ago are dropped."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable


def jit_kernel(source: str) -> Callable[..., None]:
    import numba  # deferred: importing numba costs ~0.5 s that `riskstream --help` need not pay

    # A cached kernel's globals are looked up again by module name when it loads: this module's
    # (the kernel uses builtins only).
    namespace: dict[str, Any] = {"__name__": __name__}
    path = _kernel_file(source)
    exec(compile(source, str(path) if path else "<riskstream rules kernel>", "exec"), namespace)  # noqa: S102 - generated source only
    # error_model="numpy": x / 0 gives inf/nan like numpy instead of raising mid-batch. Cached
    # when the source could be kept in a file: numba compiles a rule set in ~0.45 s, and every
    # worker, replay and backtest compiles the same few; from the cache it loads in milliseconds.
    return numba.njit(nogil=True, error_model="numpy", cache=path is not None)(namespace["rules_kernel"])


KEPT_KERNELS = 200  # rule sets whose compiled kernels stay in the cache, the most recently used


def _kernel_file(source: str) -> Path | None:
    """The generated source kept in the user cache under its hash (numba's cache needs a
    source file to key on), or None where that cannot be written. A kernel in use is touched;
    writing a new one drops those unused longest past ``KEPT_KERNELS`` (every published rule
    set adds one, ~80 kB with numba's files)."""
    import hashlib
    import os

    from riskstream.settings import user_cache_dir

    base = user_cache_dir() / "rules"
    path = base / f"kernel_{hashlib.sha256(source.encode()).hexdigest()[:24]}.py"
    try:
        if path.exists():
            os.utime(path)
        else:
            base.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(source)
            os.replace(tmp, path)  # whole or not at all: another process may be compiling it too
            _prune_kernels(base)
        return path
    except OSError:
        return None


def _prune_kernels(base: Path) -> None:
    def last_used(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except OSError:  # gone already (another process pruning)
            return 0.0

    kernels = sorted(base.glob("kernel_*.py"), key=last_used, reverse=True)
    for old in kernels[KEPT_KERNELS:]:
        for f in (old, *(base / "__pycache__").glob(f"{old.stem}.*")):
            f.unlink(missing_ok=True)
