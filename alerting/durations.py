"""Durations as operators write them in rules: ``90s``, ``5m``, ``1h30m``, ``2d``.

``text`` gives the shortest such text, and ``parse(text(d)) == d`` for any
whole number of seconds, so rule files round-trip without change.
"""

import re
from datetime import timedelta

UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
DURATION = re.compile(r"(?:(\d{1,6})d)?(?:(\d{1,6})h)?(?:(\d{1,6})m)?(?:(\d{1,9})s)?")


def parse(value) -> timedelta:
    """A duration from its text (or a number of seconds); ValueError when it is not one."""
    if isinstance(value, bool):
        raise ValueError("a duration such as 30s, 5m or 1h30m")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return timedelta(seconds=value)
    written = value.strip() if isinstance(value, str) else None
    found = DURATION.fullmatch(written) if written else None
    if found is None or not any(found.groups()):
        raise ValueError(f"{str(value)[:40]!r} is not a duration such as 30s, 5m or 1h30m")
    seconds = sum(int(n or 0) * size for n, (_, size) in zip(found.groups(), UNITS, strict=True))
    return timedelta(seconds=seconds)


def text(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds == 0:
        return "0s"
    parts = []
    for unit, size in UNITS:
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
