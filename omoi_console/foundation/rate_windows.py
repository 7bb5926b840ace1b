"""Counting windows kept in bounded memory, for the rate limits in front of Django.

Everything here is touched only from the server's event loop, between two
awaits, so no lock is needed. Every structure is capped: a flood of distinct
keys (made-up token lookups, many source addresses) evicts the oldest entries
instead of growing memory, at the price of forgetting their counts.

limits' own MemoryStorage is not used because it sweeps every key on a timer
thread every 10 ms: measured 0.4 ms a sweep at 4,000 keys and 10 ms at 50,000,
so a flood of distinct keys would keep a core busy sweeping.
"""

import hashlib
import time
from collections import OrderedDict

from limits.storage import Storage

# About 200 bytes an entry: some 10 MB per structure at the cap.
MAX_KEYS = 50_000


class BoundedMemoryStorage(Storage):
    """Fixed-window counters for limits' strategies, expired lazily and capped in number.

    Windows live in creation order, so the oldest are at the front: each new
    window first drops expired ones from there, then the oldest live ones
    while the cap is reached.
    """

    STORAGE_SCHEME = None

    def __init__(self, max_keys: int = MAX_KEYS):
        super().__init__()
        self.max_keys = max_keys
        self.windows: OrderedDict[str, list] = OrderedDict()  # key -> [count, expires_at]

    @property
    def base_exceptions(self):
        return ValueError

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        now = time.time()
        window = self.windows.get(key)
        if window is None or window[1] <= now:
            self.windows.pop(key, None)
            self._make_room(now)
            window = self.windows[key] = [0, now + expiry]
        window[0] += amount
        return window[0]

    def _make_room(self, now: float) -> None:
        windows = self.windows
        while windows:
            _, (_, expires_at) = next(iter(windows.items()))
            if expires_at > now and len(windows) < self.max_keys:
                return
            windows.popitem(last=False)

    def get(self, key: str) -> int:
        window = self.windows.get(key)
        if window is None or window[1] <= time.time():
            return 0
        return window[0]

    def get_expiry(self, key: str) -> float:
        window = self.windows.get(key)
        return time.time() if window is None else window[1]

    def check(self) -> bool:
        return True

    def reset(self) -> int:
        count = len(self.windows)
        self.windows.clear()
        return count

    def clear(self, key: str) -> None:
        self.windows.pop(key, None)


class RecentlyVerified:
    """Authorization headers that the app accepted lately, remembered by digest.

    Only a digest is kept, so the memory never holds a usable credential. A
    header leaves the set when the app refuses it (a revoked token) or after
    ``ttl`` seconds.
    """

    def __init__(self, ttl: float = 300.0, max_entries: int = MAX_KEYS):
        self.ttl = ttl
        self.max_entries = max_entries
        self.entries: OrderedDict[bytes, float] = OrderedDict()  # digest -> expires_at

    @staticmethod
    def _digest(header: bytes) -> bytes:
        return hashlib.blake2b(header, digest_size=16).digest()

    def __call__(self, header: bytes) -> bool:
        """True when ``header`` was accepted within the last ``ttl`` seconds."""
        expires_at = self.entries.get(self._digest(header))
        return expires_at is not None and expires_at > time.time()

    def add(self, header: bytes) -> None:
        """Remember that the app accepted ``header``."""
        digest = self._digest(header)
        self.entries.pop(digest, None)
        self.entries[digest] = time.time() + self.ttl
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)

    def discard(self, header: bytes) -> None:
        """Forget ``header``: the app has just refused it."""
        self.entries.pop(self._digest(header), None)

    def clear(self) -> None:
        self.entries.clear()


class WindowedTally:
    """Counts repeated events and logs each kind once per window, with its count.

    A flood must not write a line per request. An event's first occurrence
    opens a window; the line with the count is written by the first call to
    ``flush_due`` after the window closes (every request through the rate
    limits makes that call, which costs a comparison when nothing is due).
    """

    def __init__(self, logger, window_seconds: float, max_keys: int = MAX_KEYS):
        self.log = logger
        self.window = window_seconds
        self.max_keys = max_keys
        self.open: dict[tuple, list] = {}  # (event, fields) -> [count, closes_at]
        self.next_due = float("inf")

    def add(self, event: str, now: float, **fields) -> None:
        """Count one occurrence of ``event`` for these ``fields``."""
        key = (event, tuple(fields.items()))
        entry = self.open.get(key)
        if entry is not None:
            entry[0] += 1
            return
        if len(self.open) >= self.max_keys:
            self.flush_due(float("inf"))  # write them all early rather than grow
        closes_at = now + self.window
        self.open[key] = [1, closes_at]
        self.next_due = min(self.next_due, closes_at)

    def flush_due(self, now: float) -> None:
        """Write the count of every window that has closed by ``now``."""
        if now < self.next_due:
            return
        next_due = float("inf")
        for key, (count, closes_at) in list(self.open.items()):
            if closes_at <= now:
                event, fields = key
                del self.open[key]
                self.log.warning(event, count=count, window_seconds=self.window, **dict(fields))
            else:
                next_due = min(next_due, closes_at)
        self.next_due = next_due

    def clear(self) -> None:
        self.open.clear()
        self.next_due = float("inf")
