"""Rate limits enforced in front of Django, so a refused request costs microseconds.

Two limits, both answered with 429 problem JSON and ``Retry-After``:

* **Per token**, on the ingest paths: every request is counted against the
  bearer token's public lookup id, read from the header with string work alone
  (no database). Requests whose credentials are not known to be good are counted
  apart from those that are, so a client that knows a good agent's lookup id (it
  is not secret) cannot spend that agent's allowance with bad secrets.
* **Per source, for failed authentication**, on every path under the watched
  prefixes: the middleware watches the answers, and after too many 401s from one
  address it refuses that address's requests whose credentials are not known to
  be good. Agents whose tokens are good keep working from behind the same address
  (a NAT) while a client flooding stale tokens is turned away before Django.

Counts live in this process's memory: a check costs a few microseconds, where a
round trip to Redis would cost the ingest path more than the heartbeat itself.
With several web processes each counts on its own, so a client can get up to that
many times the limit before every process refuses it.
"""

import ipaddress
import math
import re
import time

import structlog
from django.conf import settings
from limits import parse_many
from limits.strategies import FixedWindowRateLimiter

from omoi_console.foundation.rate_windows import BoundedMemoryStorage, WindowedTally
from omoi_console.foundation.request_limits import refuse
from omoi_console.foundation.tokens import split_token

log = structlog.get_logger(__name__)

# Ingest paths, as URL templates: ``{...}`` stands for one path segment. The
# metrics endpoints join by being listed here.
INGEST_PATHS = ("/api/v1/agents/{id}/heartbeat", "/api/v1/metrics/ingest", "/v1/metrics")
# Where failed authentication is counted and a flooding source is refused.
WATCHED_PREFIXES = ("/api/", "/v1/")


def path_pattern(templates) -> re.Pattern:
    """One regular expression that matches any of the URL ``templates``."""
    parts = [
        "".join("[^/]+" if piece.startswith("{") else re.escape(piece) for piece in split)
        for split in (re.split(r"(\{[^}]*\})", template) for template in templates)
    ]
    return re.compile("|".join(f"(?:{part})" for part in parts))


def never_known(header: bytes) -> bool:
    """The default judgement: no credentials are known to be good."""
    return False


def authorization(headers) -> bytes | None:
    """The ``Authorization`` header of an ASGI scope's header list, else None."""
    for name, value in headers:
        if name == b"authorization":
            return value
    return None


def agent_token_lookup(header: bytes) -> str | None:
    """The lookup id of an ``Authorization: Bearer omoi_ag_...`` header, else None."""
    scheme, _, credential = header.partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return split_token(credential.strip().decode("ascii", "replace"), "ag")


def trusted_networks(entries) -> tuple:
    """Parse the trusted-proxy setting: addresses or networks (CIDR)."""
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def client_address(remote: str, forwarded_for: str | None, trusted: tuple) -> str:
    """The address a request came from, honouring X-Forwarded-For only from trusted proxies.

    Walks the X-Forwarded-For list from the right (the entry our proxy appended)
    past trusted proxies: the first untrusted entry is the client. Anything left
    of it was written by the client and proves nothing.
    """
    if not trusted or not forwarded_for or not _is_trusted(remote, trusted):
        return remote
    for entry in reversed(forwarded_for.split(",")):
        candidate = entry.strip()
        if candidate and not _is_trusted(candidate, trusted):
            return candidate
    return remote


def _is_trusted(address: str, trusted: tuple) -> bool:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(parsed in network for network in trusted)


class IngestRateLimits:
    """ASGI middleware: the per-token and per-source limits described above.

    ``is_known_good(authorization_header) -> bool`` says whether credentials are
    known to be good, without the database; ``on_verified(header)`` and
    ``on_refused(header)``, when given, hear which headers the app accepted (2xx)
    and refused (401), so that a cache of good credentials can learn from them.
    """

    def __init__(self, app, *, is_known_good=never_known, on_verified=None, on_refused=None):
        self.app = app
        self.is_known_good = is_known_good
        self.on_verified = on_verified
        self.on_refused = on_refused
        self.configure()

    def configure(self) -> None:
        """(Re)read the limits from settings and forget every count."""
        self.per_token = parse_many(settings.RATE_LIMIT_PER_TOKEN)
        self.failures = parse_many(settings.RATE_LIMIT_AUTH_FAILURES)
        self.trusted = trusted_networks(settings.TRUSTED_PROXIES)
        self.ingest = path_pattern(INGEST_PATHS)
        self.token_counts = FixedWindowRateLimiter(BoundedMemoryStorage())
        self.failure_counts = FixedWindowRateLimiter(BoundedMemoryStorage())
        self.tally = WindowedTally(log, settings.RATE_LIMIT_LOG_SECONDS)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        now = time.time()
        self.tally.flush_due(now)
        if not scope["path"].startswith(WATCHED_PREFIXES):
            return await self.app(scope, receive, send)
        header = authorization(scope["headers"])
        source = self._source(scope)
        known = header is not None and self.is_known_good(header)
        if not known:
            retry_after = self._exhausted(self.failure_counts, self.failures, now, source)
            if retry_after:
                self.tally.add("rate_limit.refused", now, limit="auth_failures", source=source)
                return await self._refuse(send, retry_after, "Too many failed authentications")
        if header is not None and self.ingest.fullmatch(scope["path"]):
            lookup = agent_token_lookup(header)
            if lookup is not None:
                retry_after = self._spend(now, lookup, "verified" if known else "unverified")
                if retry_after:
                    self.tally.add("rate_limit.refused", now, limit="per_token", lookup=lookup)
                    return await self._refuse(send, retry_after, "Too many requests for this token")
        return await self.app(scope, receive, self._watching(send, header, source))

    def _source(self, scope) -> str:
        client = scope.get("client")
        remote = client[0] if client else "unknown"
        if not self.trusted:
            return remote
        # Several X-Forwarded-For headers read as one list, in order.
        forwarded = ",".join(
            value.decode("latin-1")
            for name, value in scope["headers"]
            if name == b"x-forwarded-for"
        )
        return client_address(remote, forwarded, self.trusted)

    def _exhausted(self, limiter, items, now: float, *identifiers) -> int:
        """Seconds until every exhausted limit in ``items`` has room again; 0 if none is."""
        wait = 0.0
        for item in items:
            if not limiter.test(item, *identifiers):
                reset_at = limiter.get_window_stats(item, *identifiers).reset_time
                wait = max(wait, reset_at - now)
        return max(1, math.ceil(wait)) if wait else 0

    def _spend(self, now: float, *identifiers) -> int:
        for item in self.per_token:
            if not self.token_counts.hit(item, *identifiers):
                return self._exhausted(self.token_counts, self.per_token, now, *identifiers) or 1
        return 0

    def _watching(self, send, header: bytes | None, source: str):
        async def watched(message):
            if message["type"] == "http.response.start":
                self._heard(message["status"], header, source)
            await send(message)

        return watched

    def _heard(self, status: int, header: bytes | None, source: str) -> None:
        if status == 401:
            for item in self.failures:
                self.failure_counts.hit(item, source)
            self.tally.add("auth.failures", time.time(), source=source)
            if header is not None and self.on_refused is not None:
                self.on_refused(header)
        elif 200 <= status < 300 and header is not None and self.on_verified is not None:
            # Every view under the watched prefixes authenticates the header it is
            # sent (an unrecognised one is a 401), so a 2xx means it was checked.
            self.on_verified(header)

    @staticmethod
    async def _refuse(send, retry_after: int, reason: str) -> None:
        detail = f"{reason}; retry after {retry_after} s."
        # The body is within the bound (checked before this layer), so the
        # connection is kept: a client that honours Retry-After reuses it.
        headers = [(b"retry-after", str(retry_after).encode())]
        await refuse(send, 429, detail, headers=headers, close=False)
