"""Operator access: roles are Django groups, checks are Django permissions."""

from rest_framework.permissions import BasePermission, DjangoModelPermissions


def is_operator_user(user) -> bool:
    """A real, logged-in person (or their API token), not an agent."""
    return bool(user and user.is_authenticated and getattr(user, "pk", None) is not None)


class IsOperatorUser(BasePermission):
    message = "This endpoint is for operators."

    def has_permission(self, request, view):
        return is_operator_user(request.user)


class ModelPermissions(DjangoModelPermissions):
    """Like DRF's, but reading also needs the ``view`` permission."""

    perms_map = {
        **DjangoModelPermissions.perms_map,
        "GET": ["%(app_label)s.view_%(model_name)s"],
        "HEAD": ["%(app_label)s.view_%(model_name)s"],
        "OPTIONS": [],
    }

    def has_permission(self, request, view):
        return is_operator_user(request.user) and super().has_permission(request, view)


def require(permission: str) -> type[BasePermission]:
    """A permission class for one extra action, e.g. ``require("alerting.acknowledge_alert")``."""

    class Required(BasePermission):
        message = f"Needs the {permission} permission."

        def has_permission(self, request, view):
            return is_operator_user(request.user) and request.user.has_perm(permission)

    Required.__name__ = f"Require_{permission.replace('.', '_')}"
    return Required
