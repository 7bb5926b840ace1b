"""Agents authenticate with their own ingest token and may only speak for themselves."""

from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed

from monitoring.ingest.cache import ingest_cache
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

    def __init__(self, agent, raw_token: str = "", token_generation: int = 0):
        self.agent = agent
        self.raw_token = raw_token
        # What the ingest cache's token generation was before the token was
        # read, so a revocation racing this request keeps it out of the cache.
        self.token_generation = token_generation

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
        token_generation, _ = ingest_cache.generations("")
        token = AgentToken.authenticate(raw)
        if token is None:
            raise AuthenticationFailed("Invalid or revoked agent token.")
        return AgentPrincipal(token.agent, raw, token_generation), token

    def authenticate_header(self, request):
        return 'Bearer realm="omoi"'
