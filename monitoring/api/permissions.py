from rest_framework.permissions import BasePermission

from monitoring.api.authentication import AgentPrincipal


class IsAgent(BasePermission):
    message = "This endpoint takes an agent's ingest token."

    def has_permission(self, request, view):
        return isinstance(request.user, AgentPrincipal)


def is_agent_itself(request, agent) -> bool:
    return isinstance(request.user, AgentPrincipal) and request.user.agent.pk == agent.pk
