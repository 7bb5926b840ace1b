"""Websocket users: the session cookie (browsers) or an operator bearer token (tools)."""

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.security.websocket import OriginValidator
from django.conf import settings
from django.contrib.auth.models import AnonymousUser

from omoi_console.foundation.auth import bearer_credential, operator_for_token


class BearerTokenMiddleware:
    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        header = dict(scope.get("headers") or []).get(b"authorization")
        if header is not None:
            raw = bearer_credential(header)
            user = await database_sync_to_async(operator_for_token)(raw) if raw else None
            scope = {**scope, "user": user or AnonymousUser()}
        return await self.inner(scope, receive, send)


def WebsocketAuthMiddleware(inner):
    return AuthMiddlewareStack(BearerTokenMiddleware(inner))


class AllowedHostsOrigin(OriginValidator):
    """Refuse browsers from other sites (cross-site websocket hijacking).

    Unlike channels' AllowedHostsOriginValidator, reads ALLOWED_HOSTS on every
    connection, so settings changed after start-up (the gameday's loopback
    host) apply. A handshake without Origin comes from a non-browser client,
    which cannot ride on a victim's session cookie, so it passes to auth.
    """

    def __init__(self, application):
        super().__init__(application, allowed_origins=[])

    def valid_origin(self, parsed_origin):
        if parsed_origin is None:
            return True
        return any(
            self.match_allowed_origin(parsed_origin, pattern) for pattern in settings.ALLOWED_HOSTS
        )
