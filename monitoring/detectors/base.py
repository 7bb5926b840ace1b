"""What every streaming detector offers: a score per sample, a small state, an explanation.

Plain Python with no Django import, so the benchmark and the worker share the
same classes. A detector sees one series, one sample at a time, in time order.
"""

import json

#: A score at or above this is an alarm. Every detector maps its own notion of
#: surprise onto [0, 1] so that this one level means the same for all of them.
ALARM_SCORE = 0.5

#: A detector's JSON state must stay below this many bytes: it is stored per series.
MAX_STATE_BYTES = 4096


class Detector:
    """Base class: subclasses implement ``update``, ``state`` and ``from_state``.

    After each ``update`` the attributes ``expected_low``, ``expected_high`` (the
    range the detector expected for that sample, or None while warming up) and
    ``direction`` ("up", "down" or None) explain the score to an operator.

    ``in_excursion`` is true from the sample that alarmed until the series is
    normal again; ``calm_since`` is then the timestamp of the first normal
    sample, which is when the excursion ended. The anomaly lifecycle (one row
    per excursion) follows these two, never the raw score.
    """

    name = ""

    expected_low: float | None = None
    expected_high: float | None = None
    direction: str | None = None
    in_excursion: bool = False
    calm_since: float | None = None

    def update(self, ts: float, value: float) -> float:
        """Feed one sample (Unix seconds, value); return its anomaly score in [0, 1]."""
        raise NotImplementedError

    def state(self) -> dict:
        """Everything needed to carry on where this detector stopped, as JSON-able data."""
        raise NotImplementedError

    @classmethod
    def from_state(cls, state: dict) -> "Detector":
        """A detector that continues exactly as the one whose ``state()`` this was."""
        raise NotImplementedError

    def explain(self) -> dict:
        """Why the last sample scored as it did: expected range and direction."""
        return {
            "detector": self.name,
            "expected_low": self.expected_low,
            "expected_high": self.expected_high,
            "direction": self.direction,
        }

    def state_json(self) -> str:
        return json.dumps(self.state(), separators=(",", ":"), allow_nan=False)


class InvalidSample(ValueError):
    """A sample a detector cannot use (not finite, or earlier than the last one)."""
