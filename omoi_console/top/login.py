"""The console's login form, throttled against password guessing.

Failed logins are counted per username and per source address in Django's
cache (Redis in production, so every web process sees the same counts; local
memory in embedded mode). Once either count reaches its limit, the form answers
429 with ``Retry-After`` without checking the password, until the window closes.
The answer is the same whether or not the username exists, and a successful
login neither counts nor is slowed.
"""

import hashlib
import math
import time

import structlog
from django.conf import settings
from django.contrib.auth.views import LoginView
from django.core.cache import cache
from limits import parse_many

from omoi_console.foundation.rate_limits import client_address, trusted_networks

log = structlog.get_logger(__name__)

KEY_PREFIX = "login-failures"


def request_source(request) -> str:
    """The address a request came from, honouring trusted proxies as the rate limits do."""
    return client_address(
        request.META.get("REMOTE_ADDR", "unknown"),
        request.META.get("HTTP_X_FORWARDED_FOR"),
        trusted_networks(settings.TRUSTED_PROXIES),
    )


class LoginThrottle:
    """Failed-login counts for one attempt's username and source address."""

    def __init__(self, username: str, source: str):
        # A digest: the cache key stays short and no typed username (sometimes a
        # password typed in the wrong field) is stored.
        user = hashlib.sha256(username.strip().casefold().encode()).hexdigest()[:32]
        self.counters = [
            ("username", f"{KEY_PREFIX}:user:{user}", settings.LOGIN_FAILURES_PER_USER),
            ("source", f"{KEY_PREFIX}:source:{source}", settings.LOGIN_FAILURES_PER_SOURCE),
        ]
        self.source = source

    def _windows(self):
        for limit, key, rates in self.counters:
            for item in parse_many(rates):
                yield limit, f"{key}:{item.amount}:{item.get_expiry()}", item

    def retry_after(self) -> int:
        """Seconds until this attempt may be checked; 0 when it may be now."""
        now = time.time()
        wait = 0.0
        for _, key, item in self._windows():
            if (cache.get(key) or 0) >= item.amount:
                wait = max(wait, (cache.get(f"{key}:until") or now) - now)
        return max(1, math.ceil(wait)) if wait else 0

    def count_failure(self) -> None:
        """Count one failed login against the username and the source."""
        now = time.time()
        for limit, key, item in self._windows():
            window = item.get_expiry()
            if cache.add(key, 0, timeout=window):
                cache.set(f"{key}:until", now + window, timeout=window)
            try:
                count = cache.incr(key)
            except ValueError:  # the window closed between add and incr
                count = 1
                cache.set(key, count, timeout=window)
            if count == item.amount:
                # Once per window: the failure that starts the block.
                log.warning(
                    "login.throttled",
                    limit=limit,
                    source=self.source,
                    count=count,
                    window_seconds=window,
                )


class ThrottledLoginView(LoginView):
    """Django's LoginView, answering 429 while the username or the source is throttled."""

    template_name = "registration/login.html"

    def post(self, request, *args, **kwargs):
        self.throttle = LoginThrottle(request.POST.get("username", ""), request_source(request))
        retry_after = self.throttle.retry_after()
        if retry_after:
            # An unbound form: a bound one would check the password while rendering.
            context = self.get_context_data(
                form=self.get_form_class()(request),
                throttled=True,
                retry_minutes=math.ceil(retry_after / 60),
            )
            response = self.render_to_response(context, status=429)
            response["Retry-After"] = str(retry_after)
            return response
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form):
        self.throttle.count_failure()
        return super().form_invalid(form)
