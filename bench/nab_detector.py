"""The production default detector in the NAB scorer's calling convention.

    score_series(timestamps, values) -> list of scores in [0, 1]

Runs exactly ``monitoring.detectors.get_detector()``: the default class with its
default parameters, one fresh detector per file, fed sample by sample.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the scorer loads this file by path

from monitoring.detectors import get_detector  # noqa: E402


def run(detector, timestamps, values) -> list[float]:
    """Feed a whole series to one detector; datetime64[s] timestamps become Unix seconds."""
    seconds = timestamps.astype("int64").astype(float).tolist()
    update = detector.update
    return [update(t, v) for t, v in zip(seconds, values.tolist(), strict=True)]


def score_series(timestamps, values) -> list[float]:
    return run(get_detector(), timestamps, values)
