"""Streaming anomaly detectors, chosen by name per metric.

    det = get_detector()                 # the default, with its default parameters
    score = det.update(ts, value)        # in [0, 1]; >= ALARM_SCORE is an alarm
    saved = det.state()                  # small JSON-able dict, stored per series
    det = restore_detector(saved)        # carries on exactly where it stopped

No Django here: the benchmark runs these classes without the project.
"""

from monitoring.detectors.base import ALARM_SCORE, MAX_STATE_BYTES, Detector, InvalidSample
from monitoring.detectors.robust_seasonal import RobustSeasonalDetector
from monitoring.detectors.rolling_p95 import RollingP95Detector

DETECTORS: dict[str, type[Detector]] = {
    RobustSeasonalDetector.name: RobustSeasonalDetector,
    RollingP95Detector.name: RollingP95Detector,
}
DEFAULT_DETECTOR = RobustSeasonalDetector.name


def get_detector(name: str = DEFAULT_DETECTOR, **params) -> Detector:
    """A fresh detector of that name; unknown names and parameters raise ValueError."""
    try:
        cls = DETECTORS[name]
    except KeyError:
        raise ValueError(f"unknown detector {name!r}; known: {sorted(DETECTORS)}") from None
    try:
        return cls(**params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for {name}: {exc}") from None


def restore_detector(state: dict) -> Detector:
    """The detector whose ``state()`` this was, ready for its next sample."""
    name = state.get("detector") if isinstance(state, dict) else None
    if name not in DETECTORS:
        raise ValueError(f"state names no known detector: {name!r}")
    try:
        return DETECTORS[name].from_state(state)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed {name} state: {exc!r}") from None


__all__ = [
    "ALARM_SCORE",
    "DEFAULT_DETECTOR",
    "DETECTORS",
    "MAX_STATE_BYTES",
    "Detector",
    "InvalidSample",
    "RobustSeasonalDetector",
    "RollingP95Detector",
    "get_detector",
    "restore_detector",
]
