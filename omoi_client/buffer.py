"""The local buffer of samples not yet confirmed by the console.

Samples wait here until a batch of them is confirmed stored. A batch, once
cut, keeps its samples and its idempotency key until the console has it (or
refuses it), so sending it again after a lost answer cannot store it twice.
The buffer is bounded: when it is full, the oldest waiting samples make room
and are counted as dropped. The batch being sent is never cut into.
"""

import uuid
from collections import deque
from dataclasses import dataclass, field


@dataclass
class Counters:
    """What became of the samples and requests, since the client was made."""

    sent: int = 0  # samples the console confirmed (stored, or had already)
    retried: int = 0  # requests sent again after a failed attempt
    dropped: int = 0  # samples pushed out of a full buffer, or unsent at close
    rejected: int = 0  # samples in batches the console refused (422 and kin)


@dataclass(frozen=True)
class Batch:
    samples: tuple[dict, ...]
    key: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __len__(self) -> int:
        return len(self.samples)


class SampleBuffer:
    def __init__(self, limit: int, batch_size: int, counters: Counters):
        if batch_size < 1 or limit < batch_size:
            raise ValueError("batch_size >= 1 and buffer_limit >= batch_size")
        self.limit = limit
        self.batch_size = batch_size
        self.counters = counters
        self._waiting: deque[tuple[float, dict]] = deque()  # (recorded at, sample)
        self.current: Batch | None = None

    def __len__(self) -> int:
        return len(self._waiting) + (len(self.current) if self.current else 0)

    def add(self, sample: dict, at: float) -> None:
        self._waiting.append((at, sample))
        while len(self) > self.limit and self._waiting:
            self._waiting.popleft()
            self.counters.dropped += 1

    def waiting(self) -> int:
        return len(self._waiting)

    def oldest_at(self) -> float | None:
        """When the oldest sample not yet in a batch was recorded."""
        return self._waiting[0][0] if self._waiting else None

    def next_batch(self) -> Batch | None:
        """The batch to send: the one already cut, else a new one from the oldest samples."""
        if self.current is None and self._waiting:
            size = min(self.batch_size, len(self._waiting))
            self.current = Batch(tuple(self._waiting.popleft()[1] for _ in range(size)))
        return self.current

    def settle(self, batch: Batch) -> None:
        """The console has ``batch`` (or refused it for good): let it go."""
        if self.current is batch:
            self.current = None

    def clear(self) -> int:
        """Forget everything; how many samples that was."""
        count = len(self)
        self._waiting.clear()
        self.current = None
        return count
