from rest_framework.permissions import BasePermission

from monitoring.api.authentication import AgentPrincipal


class IsAgent(BasePermission):
    message = "This endpoint takes an agent's ingest token."

    def has_permission(self, request, view):
        return isinstance(request.user, AgentPrincipal)
