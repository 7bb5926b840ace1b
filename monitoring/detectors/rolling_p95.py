"""Reference detector: how far a value sits above the 95th percentile of recent values.

The obvious baseline, kept to measure the default against. It scores every row
of an excursion (no alarm-once logic), ignores drops and seasonality, and keeps
its window of raw values as state, so the window is short enough for the state
to stay small.
"""

import bisect
import math
from collections import deque

from monitoring.detectors.base import Detector, InvalidSample


def percentile(ordered: list[float], q: float) -> float:
    """Linear-interpolated percentile of an ordered list (as numpy's default)."""
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class RollingP95Detector(Detector):
    """d = (x - p95) / (p95 - p5) over the last ``window`` values; score = d / (1 + d)."""

    name = "rolling_p95"

    def __init__(self, window: int = 100, min_history: int = 20):
        if not 2 <= min_history <= window <= 150:
            raise ValueError("need 2 <= min_history <= window <= 150")
        self.window = int(window)
        self.min_history = int(min_history)
        self.recent: deque[float] = deque()
        self.ordered: list[float] = []
        self.t_last: float | None = None
        self.expected_low = self.expected_high = self.direction = None

    def update(self, ts: float, value: float) -> float:
        x, t = float(value), float(ts)
        if not (math.isfinite(x) and math.isfinite(t)):
            raise InvalidSample("timestamp and value must be finite numbers")
        if self.t_last is not None and t < self.t_last:
            raise InvalidSample("samples must arrive in time order")
        self.t_last = t
        score = 0.0
        self.expected_low = self.expected_high = self.direction = None
        if len(self.recent) >= self.min_history:
            p5 = percentile(self.ordered, 5.0)
            p95 = percentile(self.ordered, 95.0)
            spread = p95 - p5
            if spread <= 0:
                spread = max(abs(p95) * 1e-3, 1e-9)
            d = (x - p95) / spread
            score = d / (1.0 + d) if d > 0 else 0.0
            self.expected_low, self.expected_high = None, p95
            self.direction = "up" if d > 0 else None
        self.recent.append(x)
        bisect.insort(self.ordered, x)
        if len(self.recent) > self.window:
            old = self.recent.popleft()
            del self.ordered[bisect.bisect_left(self.ordered, old)]
        return score

    def state(self) -> dict:
        return {
            "detector": self.name,
            "params": {"window": self.window, "min_history": self.min_history},
            "t_last": self.t_last,
            "recent": list(self.recent),
        }

    @classmethod
    def from_state(cls, state: dict) -> "RollingP95Detector":
        det = cls(**state["params"])
        det.t_last = None if state["t_last"] is None else float(state["t_last"])
        det.recent = deque(float(v) for v in state["recent"][-det.window :])
        det.ordered = sorted(det.recent)
        return det
