"""One progress line a second for long jobs, on stderr."""

from __future__ import annotations

import sys
import time


class Progress:
    """One line on stderr about once a second: rows, % done, rows/s."""

    def __init__(self, total: int, what: str, out=None, every_s: float = 1.0):
        self.total, self.what, self.out, self.every_s = total, what, out, every_s
        self.t0 = self.last = time.perf_counter()
        self.last_done = 0

    def update(self, done: int, extra: str = "") -> None:
        now = time.perf_counter()
        if now - self.last < self.every_s and done < self.total:
            return
        rate = (done - self.last_done) / max(now - self.last, 1e-9)
        pct = 100.0 * done / max(self.total, 1)
        print(f"replay [{now - self.t0:6.1f}s] {done:>11,}/{self.total:,} {self.what} ({pct:5.1f}%) "
              f"{rate:>9,.0f}/s{extra}", file=self.out or sys.stderr, flush=True)
        self.last, self.last_done = now, done


