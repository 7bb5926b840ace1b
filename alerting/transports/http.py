"""The base of every channel that POSTs over HTTP: timeouts, what is worth retrying,
429 and Retry-After, HMAC signing, and the guard against private targets.

The guard resolves the host when the connection is made and connects to the
address it checked, so a name that resolves to a public address when saved and
to 127.0.0.1 later (DNS rebinding) is still refused.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import httpcore
import httpx
from django.conf import settings
from django.core.exceptions import ValidationError

from alerting.transports.base import Transport, TransportError

SIGNATURE_HEADER = "X-Omoi-Signature"
TIMESTAMP_HEADER = "X-Omoi-Timestamp"
USER_AGENT = "omoi-console-alerting"
# Receivers answer in time or are retried later: a lease (delivery.DELIVERY_LEASE)
# must outlast the slowest attempt.
MAX_TIMEOUT_SECONDS = 30.0
MIN_TIMEOUT_SECONDS = 0.1
MIN_SECRET_LENGTH = 16
# How much of a refusing receiver's answer is kept in last_error.
ERROR_BODY_CHARS = 200


class RefusedAddress(Exception):
    """The target resolves to an address deliveries may not reach."""


def refused_reason(address: str) -> str | None:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    for test, reason in (
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (ip.is_unspecified, "unspecified"),
        (ip.is_private, "private"),
        (ip.is_reserved, "reserved"),
    ):
        if test:
            return reason
    return None


def check_address(address: str) -> None:
    if settings.WEBHOOK_ALLOW_PRIVATE:
        return
    reason = refused_reason(address)
    if reason:
        raise RefusedAddress(
            f"refused {reason} address {address} (OMOI_WEBHOOK_ALLOW_PRIVATE is off)"
        )


class GuardedBackend(httpcore.SyncBackend):
    """Resolves, checks every address, then connects to a checked one."""

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"cannot resolve host: {exc.strerror}") from exc
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        for address in addresses:
            check_address(address)
        last_error: Exception | None = None
        for address in addresses:
            try:
                return super().connect_tcp(
                    address, port, timeout, local_address, socket_options or []
                )
            except httpcore.ConnectError as exc:
                last_error = exc
        raise last_error or httpcore.ConnectError("no address")


class GuardedTransport(httpx.HTTPTransport):
    def __init__(self):
        super().__init__(retries=0)
        # Same pool httpx would build, with the guarded resolver underneath.
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=1,
            network_backend=GuardedBackend(),
        )


def validate_url(value, key: str = "url") -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError({key: "required, an http or https URL"})
    value = value.strip()
    if len(value) > 2000:
        raise ValidationError({key: "at most 2000 characters"})
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises on a bad port
    except ValueError:
        raise ValidationError({key: "not a valid URL"}) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError({key: "must be an http or https URL with a host"})
    if parts.username or parts.password:
        raise ValidationError({key: "credentials in the URL are not allowed; use the secret"})
    try:
        check_address(parts.hostname)
    except ValueError:
        pass  # a name, checked when it is resolved at send time
    except RefusedAddress as exc:
        raise ValidationError({key: str(exc)}) from None
    return value


def validate_timeout(value, key: str = "timeout") -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError({key: "a number of seconds"})
    if not MIN_TIMEOUT_SECONDS <= value <= MAX_TIMEOUT_SECONDS:
        raise ValidationError(
            {key: f"between {MIN_TIMEOUT_SECONDS} and {MAX_TIMEOUT_SECONDS} seconds"}
        )
    return float(value)


def validate_secret(value, key: str = "secret") -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str) or len(value) < MIN_SECRET_LENGTH or len(value) > 512:
        raise ValidationError({key: f"a string of {MIN_SECRET_LENGTH} to 512 characters"})
    return value


def clean_fields(config: dict, checks: dict) -> dict:
    """Run each key's check, collecting every field's error; drop values that are None."""
    cleaned, errors = {}, {}
    for key, check in checks.items():
        try:
            value = check(config.get(key))
        except ValidationError as exc:
            errors.update(exc.message_dict if hasattr(exc, "error_dict") else {key: exc.messages})
            continue
        if value is not None:
            cleaned[key] = value
    if errors:
        raise ValidationError(errors)
    return cleaned


def origin(url: str) -> str:
    """Scheme, host and port: paths and queries often carry tokens (Slack's do)."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``sha256=`` HMAC of ``"<timestamp>." + body``; signing the timestamp lets a
    receiver refuse replays."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds (RFC 9110: delay-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, min(seconds, float(settings.NOTIFICATION_RETRY_AFTER_MAX_SECONDS)))


@dataclass
class Outgoing:
    url: str
    body: bytes
    headers: dict = field(default_factory=dict)


def redact(text: str, secrets: list[str]) -> str:
    """``text`` without the secrets; a secret URL's path and query go too, since a
    receiver may echo just the path it was called on."""
    pieces = []
    for secret in secrets:
        if not secret:
            continue
        pieces.append(secret)
        if secret.startswith(("http://", "https://")):
            parts = urlsplit(secret)
            if len(parts.path) > 1:
                pieces.append(parts.path)
            if parts.query:
                pieces.append(parts.query)
    for piece in sorted(pieces, key=len, reverse=True):
        text = text.replace(piece, "[secret]")
    return text


class HttpTransport(Transport):
    """POST one JSON document per notification; subclasses build it in ``outgoing``."""

    secret_keys = frozenset({"secret"})

    def outgoing(self, notification) -> Outgoing:
        raise NotImplementedError

    def target(self, receiver) -> str:
        url = receiver.config.get("url")
        return origin(url) if url else ""

    def timeout(self, receiver) -> float:
        return receiver.config.get("timeout") or settings.NOTIFICATION_TIMEOUT_SECONDS

    def secrets(self, receiver) -> list[str]:
        values = [receiver.config.get(key) for key in self.secret_keys]
        return [v for v in values if isinstance(v, str)]

    def send(self, notification) -> None:
        receiver = notification.receiver
        message = self.outgoing(notification)
        self.post(receiver, message)

    def post(self, receiver, message: Outgoing) -> httpx.Response:
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        headers.update(message.headers)
        secret = receiver.config.get("secret")
        if secret:
            timestamp = int(time.time())
            headers[TIMESTAMP_HEADER] = str(timestamp)
            headers[SIGNATURE_HEADER] = sign(secret, timestamp, message.body)
        where = origin(message.url)
        secrets = self.secrets(receiver)
        timeout = self.timeout(receiver)
        try:
            with httpx.Client(
                transport=GuardedTransport(),
                timeout=httpx.Timeout(timeout),
                follow_redirects=False,
                trust_env=False,  # a proxy from the environment would bypass the guard
            ) as client:
                response = client.post(message.url, content=message.body, headers=headers)
        except RefusedAddress as exc:
            raise TransportError(f"{where}: {exc}", permanent=True) from None
        except httpx.TimeoutException:
            raise TransportError(f"{where}: timed out after {timeout:g}s") from None
        except httpx.HTTPError as exc:
            # The class name only: httpx messages may quote the URL, and URLs carry tokens.
            detail = redact(str(exc), [*secrets, message.url])[:ERROR_BODY_CHARS]
            raise TransportError(f"{where}: {type(exc).__name__}: {detail}") from None
        classify(response, where, [*secrets, message.url])
        return response


def classify(response: httpx.Response, where: str, secrets: list[str]) -> None:
    """Return on 2xx; raise TransportError, permanent unless the status is worth retrying."""
    status = response.status_code
    if 200 <= status < 300:
        return
    snippet = redact(response.text[:ERROR_BODY_CHARS], secrets).strip()
    message = f"{where}: HTTP {status}" + (f": {snippet}" if snippet else "")
    if status in (408, 429) or status >= 500:
        retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        raise TransportError(message, retry_after=retry_after)
    raise TransportError(message, permanent=True)


def json_body(document) -> bytes:
    return json.dumps(document, separators=(",", ":"), default=str).encode()
