"""When to send a request again, and how long to wait first.

Connection errors, timeouts, 429 and 503 are retried; every other answer is
final. The wait is exponential backoff with full jitter (a random time in a
window that doubles each attempt, up to a cap), so that a fleet coming back
from an outage does not return in lockstep; a ``Retry-After`` from the console
replaces it. Attempts and total time are both bounded: a wait that would end
past the time budget is not started.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

RETRIED_STATUSES = frozenset({429, 503})
# Failures of the connection, not of the request: a refused or reset connection, a
# timeout, a kept connection the server closed. A malformed URL is not among them.
RETRIED_ERRORS = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class RetryPolicy:
    """How hard the client tries one request.

    ``attempts`` counts the first try. The n-th wait is a random time in
    ``[0, min(cap, base * 2 ** (n - 1))]`` unless the console sent Retry-After.
    ``budget`` bounds the seconds from the first try to the start of the last.
    """

    attempts: int = 6
    base: float = 0.5
    cap: float = 30.0
    budget: float = 120.0

    def __post_init__(self):
        if self.attempts < 1 or self.base <= 0 or self.cap < self.base or self.budget < 0:
            raise ValueError("attempts >= 1, 0 < base <= cap and budget >= 0")


class RetryableStatus(Exception):
    """The console answered 429 or 503: worth another attempt."""

    def __init__(self, response: httpx.Response, retry_after: float | None):
        self.response = response
        self.retry_after = retry_after
        super().__init__(response.status_code)


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """A ``Retry-After`` header in seconds: delay-seconds or an HTTP date; None if unusable."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(int(value))
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # "-0000" in an HTTP date means UTC as well
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - (now or datetime.now(UTC))).total_seconds())


class _RetryAfterOrJitter(wait_base):
    def __init__(self, policy: RetryPolicy):
        self.jitter = wait_random_exponential(multiplier=policy.base, max=policy.cap)

    def __call__(self, retry_state: RetryCallState) -> float:
        failure = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(failure, RetryableStatus) and failure.retry_after is not None:
            return failure.retry_after
        return self.jitter(retry_state)


class _WithinBudget(stop_base):
    """Stop when the coming wait would end past the budget, on the client's own clock."""

    def __init__(self, budget: float, clock: Clock):
        self.budget = budget
        self.clock = clock
        self.started = clock()

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.clock() - self.started + (retry_state.upcoming_sleep or 0.0) > self.budget


def retrying(
    policy: RetryPolicy,
    *,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
    on_retry: Callable[[RetryCallState], None] | None = None,
) -> AsyncRetrying:
    """A fresh retry loop for one request (``async for attempt in retrying(...)``)."""
    return AsyncRetrying(
        retry=retry_if_exception_type((*RETRIED_ERRORS, RetryableStatus)),
        wait=_RetryAfterOrJitter(policy),
        stop=stop_after_attempt(policy.attempts) | _WithinBudget(policy.budget, clock),
        sleep=sleep,
        before_sleep=on_retry,
        reraise=True,
    )
