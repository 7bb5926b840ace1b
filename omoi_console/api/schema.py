"""OpenAPI descriptions of the two bearer-token schemes (targets named as strings,
so the foundation still imports no app)."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class OperatorTokenScheme(OpenApiAuthenticationExtension):
    target_class = "omoi_console.auth.OperatorTokenAuthentication"
    name = "operatorToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "Operator API token (omoi_op_...), from `manage.py operators token`.",
        }


class AgentTokenScheme(OpenApiAuthenticationExtension):
    target_class = "monitoring.api.authentication.AgentTokenAuthentication"
    name = "agentToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "Agent ingest token (omoi_ag_...), shown once at registration.",
        }
