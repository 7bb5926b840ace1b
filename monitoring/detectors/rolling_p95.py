"""Reference detector: how far a value sits above the 95th percentile of recent values.

The obvious baseline, kept to measure the default against. It scores every row
of an excursion (no alarm-once logic) and ignores drops and seasonality. Its
window spans the last ``window`` samples but keeps only every ``stride``-th of
them, so that the values it stores as state stay few (the percentiles of a
systematic sample of the window are close to the window's own).
"""

import bisect
import math
from collections import deque

from monitoring.detectors.base import ALARM_SCORE, Detector, InvalidSample


def percentile(ordered: list[float], q: float) -> float:
    """Linear-interpolated percentile of an ordered list (as numpy's default)."""
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class RollingP95Detector(Detector):
    """d = (x - p95) / (p95 - p5) over the last ``window`` samples; score = d / (1 + d)."""

    name = "rolling_p95"
    MAX_KEPT = 150  # values kept in state: 150 floats stay under the state budget

    def __init__(self, window: int = 500, stride: int = 5, min_history: int = 20):
        if not (stride >= 1 and 2 <= min_history <= window and window // stride <= self.MAX_KEPT):
            raise ValueError(
                f"need stride >= 1, 2 <= min_history <= window, window/stride <= {self.MAX_KEPT}"
            )
        self.window = int(window)
        self.stride = int(stride)
        self.min_history = int(min_history)
        self.seen = 0
        self.recent: deque[float] = deque()
        self.ordered: list[float] = []
        self.t_last: float | None = None
        self.in_excursion = False
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
        if self.seen >= self.min_history:
            p5 = percentile(self.ordered, 5.0)
            p95 = percentile(self.ordered, 95.0)
            spread = p95 - p5
            if spread <= 0:
                spread = max(abs(p95) * 1e-3, 1e-9)
            d = (x - p95) / spread
            score = d / (1.0 + d) if d > 0 else 0.0
            self.expected_low, self.expected_high = None, p95
            self.direction = "up" if d > 0 else None
        if self.seen % self.stride == 0:
            self.recent.append(x)
            bisect.insort(self.ordered, x)
            if len(self.recent) > self.window // self.stride:
                old = self.recent.popleft()
                del self.ordered[bisect.bisect_left(self.ordered, old)]
        self.seen += 1
        # No memory of excursions: every sample above the band is one, the first below ends it.
        if score >= ALARM_SCORE:
            self.in_excursion, self.calm_since = True, None
        elif self.in_excursion:
            self.in_excursion, self.calm_since = False, t
        return score

    def state(self) -> dict:
        return {
            "detector": self.name,
            "params": {
                "window": self.window,
                "stride": self.stride,
                "min_history": self.min_history,
            },
            "seen": self.seen,
            "t_last": self.t_last,
            "in_excursion": self.in_excursion,
            "calm_since": self.calm_since,
            "recent": list(self.recent),
        }

    @classmethod
    def from_state(cls, state: dict) -> "RollingP95Detector":
        det = cls(**state["params"])
        det.t_last = None if state["t_last"] is None else float(state["t_last"])
        det.seen = int(state["seen"])
        det.in_excursion = bool(state.get("in_excursion", False))
        since = state.get("calm_since")
        det.calm_since = None if since is None else float(since)
        det.recent = deque(float(v) for v in state["recent"][-(det.window // det.stride) :])
        det.ordered = sorted(det.recent)
        return det
