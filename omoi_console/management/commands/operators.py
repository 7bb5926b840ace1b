from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from omoi_console.foundation.roles import ROLES, grant_role
from omoi_console.models import OperatorToken


class Command(BaseCommand):
    help = "Create operators, issue their API tokens (shown once) and revoke tokens."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="create an operator (or change its role)")
        create.add_argument("username")
        create.add_argument("--role", choices=ROLES, required=True)
        create.add_argument("--password", help="login password; without it, API tokens only")
        token = sub.add_parser("token", help="issue an API token; printed once")
        token.add_argument("username")
        token.add_argument("--name", default="", help="label to recognise the token by")
        revoke = sub.add_parser("revoke", help="revoke a token by its lookup id")
        revoke.add_argument("lookup")

    def handle(self, *args, action, **options):
        getattr(self, f"_{action}")(**options)

    def _create(self, username, role, password=None, **_):
        with transaction.atomic():
            user, created = get_user_model().objects.get_or_create(username=username)
            if password:
                user.set_password(password)
            elif created:
                user.set_unusable_password()
            user.save()
            grant_role(user, role)
        self.stdout.write(f"{'created' if created else 'updated'} {username} with role {role}")

    def _token(self, username, name="", **_):
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None:
            raise CommandError(f"no active operator {username!r}")
        token, raw = OperatorToken.issue(user=user, name=name)
        self.stdout.write(f"token {token.lookup} for {username} (shown once):\n{raw}")

    def _revoke(self, lookup, **_):
        if not OperatorToken.revoke_lookup(lookup):
            raise CommandError(f"no token {lookup!r}")
        self.stdout.write(f"revoked {lookup}")
