"""Operator roles as Django groups, kept in sync with this table after every migrate."""

from django.contrib.auth.models import Group, Permission
from django.db.models import Q

PRODUCT_APPS = ("omoi_console", "observability", "monitoring", "alerting", "watchdog")

VIEWER = "viewer"
OPERATOR = "operator"
ADMIN = "admin"
ROLES = (VIEWER, OPERATOR, ADMIN)

# What each role adds to the one below it. ``*`` = every permission of the product apps.
ROLE_GRANTS: dict[str, tuple[str, ...]] = {
    # The console's own spans and log lines; its profiles stay with admins.
    VIEWER: ("view_*", "observability.view_spanrecord", "observability.view_logrecord"),
    OPERATOR: (
        "alerting.acknowledge_alert",
        "alerting.resolve_alert",
        "alerting.add_silence",
        "alerting.change_silence",
        "alerting.resend_notification",
        "watchdog.act_on_agent",
    ),
    ADMIN: ("*",),
}


def permissions_for(role: str):
    query = Q(pk__in=[])
    for level in ROLES[: ROLES.index(role) + 1]:
        for grant in ROLE_GRANTS[level]:
            if grant == "*":
                query |= Q(content_type__app_label__in=PRODUCT_APPS)
            elif grant == "view_*":
                query |= Q(content_type__app_label__in=PRODUCT_APPS, codename__startswith="view_")
            else:
                app_label, codename = grant.split(".")
                query |= Q(content_type__app_label=app_label, codename=codename)
    return Permission.objects.filter(query)


def sync_roles() -> None:
    for role in ROLES:
        group, _ = Group.objects.get_or_create(name=role)
        group.permissions.set(permissions_for(role))


def grant_role(user, role: str) -> None:
    """Make ``user`` hold exactly ``role``; admins may also use the Django admin."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    user.groups.remove(*Group.objects.filter(name__in=ROLES))
    user.groups.add(Group.objects.get(name=role))
    user.is_staff = role == ADMIN
    user.save(update_fields=["is_staff"])
