"""The dead man's switch: a ping to a URL outside, sent only while the console is healthy.

Something outside (a healthchecks-style service, or Alertmanager users' always-
firing watchdog receiver) expects a ping every ``DEADMAN_INTERVAL_SECONDS`` and
raises the alarm when one is missing, which is the only way anyone hears about
a console that is gone altogether. A ping goes out only when the database, the
cache and the console's own processes are well, so a console that is up but
not working is silent too.

The periodic job claims the interval's slot in the cache (one ping per interval
across every worker), checks the console's health, and hands the request to a
thread of its own: a slow or unreachable receiver holds up nothing else.
"""

from concurrent.futures import Future, ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import structlog
from django.conf import settings
from django.core.cache import cache

from omoi_console.top.health import console_health

log = structlog.get_logger(__name__)

TIMEOUT_SECONDS = 5.0
_sender = ThreadPoolExecutor(1, thread_name_prefix="omoi-deadman")


def ping_deadman_switch() -> Future | None:
    """Send the ping when one is due and the console is healthy; the send's future, else None."""
    url = settings.DEADMAN_URL
    if not url:
        return None
    slot = f"{settings.CHANNELS_PREFIX}:deadman:sent"
    # Expires a little before the interval ends, so a job that runs a moment late still sends.
    if not cache.add(slot, 1, timeout=max(1, settings.DEADMAN_INTERVAL_SECONDS - 1)):
        return None
    health = console_health()
    if health["status"] != "ok":
        down = sorted(name for name, state in health.items() if name != "status" and state != "ok")
        log.warning("deadman.withheld", down=down)
        return None
    return _sender.submit(send_ping, url, settings.DEADMAN_METHOD)


def send_ping(url: str, method: str) -> bool:
    """One request; a failure is a warning naming only the receiver's host, never its URL."""
    try:
        response = httpx.request(method.upper(), url, timeout=TIMEOUT_SECONDS)
    except httpx.HTTPError as exc:
        log.warning("deadman.ping_failed", host=host_of(url), error=type(exc).__name__)
        return False
    if response.is_error:
        log.warning("deadman.ping_failed", host=host_of(url), status=response.status_code)
        return False
    log.debug("deadman.pinged", host=host_of(url))
    return True


def host_of(url: str) -> str:
    """The scheme and host of ``url``: its path, query and credentials may be its secret."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
