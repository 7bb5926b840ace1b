"""Agents authenticate with their own ingest token and may only speak for themselves."""

from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed

from monitoring.models import AgentToken
from omoi_console.foundation.auth import bearer_credential
from omoi_console.foundation.tokens import split_token


class AgentPrincipal:
    """``request.user`` for an agent's request: authenticated, holds no operator permission."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False
    pk = None

    def __init__(self, agent):
        self.agent = agent

    def __str__(self):
        return f"agent:{self.agent.pk}"

    def has_perm(self, perm, obj=None):
        return False

    def has_perms(self, perms, obj=None):
        return False


class AgentTokenAuthentication(BaseAuthentication):
    """``Authorization: Bearer omoi_ag_...``."""

    def authenticate(self, request):
        raw = bearer_credential(get_authorization_header(request))
        if raw is None or split_token(raw, AgentToken.KIND) is None:
            return None
        token = AgentToken.authenticate(raw)
        if token is None:
            raise AuthenticationFailed("Invalid or revoked agent token.")
        return AgentPrincipal(token.agent), token

    def authenticate_header(self, request):
        return 'Bearer realm="omoi"'
