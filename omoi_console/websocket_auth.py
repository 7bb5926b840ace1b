"""Websocket users: the session cookie (browsers) or an operator bearer token (tools)."""

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from django.contrib.auth.models import AnonymousUser

from omoi_console.auth import bearer_credential, operator_for_token


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
