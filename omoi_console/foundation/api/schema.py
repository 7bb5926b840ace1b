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
    target_class = "omoi_console.foundation.auth.OperatorTokenAuthentication"
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


PROBLEM_SCHEMA = {
    "type": "object",
    "description": "RFC 9457 problem details.",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "description": "Each invalid field (422 only).",
            "items": {
                "type": "object",
                "properties": {
                    "field": {"type": "string", "nullable": True},
                    "detail": {"type": "string"},
                },
            },
        },
    },
    "required": ["type", "title", "status", "detail"],
}
PROBLEMS = {
    "400": "Malformed JSON, or a request refused before any view.",
    "401": "No credentials, unrecognised credentials, or an unknown or revoked token.",
    "403": "Authenticated, but not allowed.",
    "404": "No such object.",
    "409": "Conflicts with the current state.",
    "413": "Request body over the size bound.",
    "415": "Not a UTF-8 JSON body.",
    "422": "Invalid fields or query parameters, each named.",
}
WITH_BODY = ("400", "413", "415", "422")


def add_problem_responses(result, generator, request, public):
    """Postprocessing hook: document the problem responses every operation can give."""
    result.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            codes = ["401", "403", "422"]
            if "{" in path:
                codes.append("404")
            if method in ("post", "put", "patch"):
                codes += [*WITH_BODY, "409"]
            responses = operation.setdefault("responses", {})
            for code in codes:
                responses.setdefault(code, {"description": PROBLEMS[code], "content": problem})
            operation["responses"] = dict(sorted(responses.items()))
    return result
