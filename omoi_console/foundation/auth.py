"""Operator API tokens for DRF and websocket clients."""

from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed

from omoi_console.foundation.tokens import split_token
from omoi_console.models import OperatorToken


def bearer_credential(header: bytes) -> str | None:
    """The token in an ``Authorization: Bearer <token>`` header, else None."""
    parts = header.split()
    if len(parts) != 2 or parts[0].lower() != b"bearer":
        return None
    try:
        return parts[1].decode("ascii")
    except UnicodeDecodeError:
        return None


def operator_for_token(raw: str):
    """The active user that ``raw`` (an operator token) stands for, else None."""
    token = OperatorToken.authenticate(raw)
    if token is None or not token.user.is_active:
        return None
    return token.user


class OperatorTokenAuthentication(BaseAuthentication):
    """``Authorization: Bearer omoi_op_...``: acts as the token's user."""

    def authenticate(self, request):
        raw = bearer_credential(get_authorization_header(request))
        if raw is None or split_token(raw, OperatorToken.KIND) is None:
            return None
        user = operator_for_token(raw)
        if user is None:
            raise AuthenticationFailed("Invalid or revoked token.")
        return user, raw

    def authenticate_header(self, request):
        return 'Bearer realm="omoi"'


class RefuseUnrecognisedCredentials(BaseAuthentication):
    """An ``Authorization`` header no scheme above took: say so rather than "not provided"."""

    def authenticate(self, request):
        if get_authorization_header(request):
            raise AuthenticationFailed(
                "Unrecognised credentials: send Authorization: Bearer omoi_op_… (operators) "
                "or Bearer omoi_ag_… (agents)."
            )
        return None

    def authenticate_header(self, request):
        return 'Bearer realm="omoi"'
