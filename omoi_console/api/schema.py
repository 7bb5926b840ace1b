"""OpenAPI descriptions of the two bearer-token schemes (targets named as strings,
so the foundation still imports no app).

Every view accepts every scheme, so that a token of the wrong kind is a clear
403 rather than an anonymous 401; the schema still lists for each endpoint only
the scheme it is for. Agent-facing views say so with ``for_agents = True``.
"""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


def for_agents(auto_schema) -> bool:
    return getattr(auto_schema.view, "for_agents", False)


class OperatorTokenScheme(OpenApiAuthenticationExtension):
    target_class = "omoi_console.auth.OperatorTokenAuthentication"
    name = "operatorToken"

    def get_security_requirement(self, auto_schema):
        return None if for_agents(auto_schema) else {self.name: []}

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "Operator API token (omoi_op_...), from `manage.py operators token`.",
        }


class AgentTokenScheme(OpenApiAuthenticationExtension):
    target_class = "monitoring.api.authentication.AgentTokenAuthentication"
    name = "agentToken"

    def get_security_requirement(self, auto_schema):
        return {self.name: []} if for_agents(auto_schema) else None

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "Agent ingest token (omoi_ag_...), shown once at registration.",
        }


class SessionScheme(OpenApiAuthenticationExtension):
    """The browser session, for operators only; takes precedence over the built-in one."""

    target_class = "rest_framework.authentication.SessionAuthentication"
    name = "cookieAuth"
    priority = 1

    def get_security_requirement(self, auto_schema):
        return None if for_agents(auto_schema) else {self.name: []}

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "cookie", "name": "sessionid"}
