from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import IntegrityError

from monitoring import services
from monitoring.models import Agent, AgentRole, AgentToken


class Command(BaseCommand):
    help = "Register agents and manage their ingest tokens (shown once)."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        register = sub.add_parser("register", help="register an agent; prints its token once")
        register.add_argument("agent_id")
        register.add_argument("--role", choices=AgentRole.values, required=True)
        register.add_argument("--interval", type=float, help="heartbeat interval, seconds")
        token = sub.add_parser("token", help="issue another ingest token; printed once")
        token.add_argument("agent_id")
        token.add_argument("--name", default="")
        revoke = sub.add_parser("revoke", help="revoke a token by its lookup id")
        revoke.add_argument("lookup")

    def handle(self, *args, action, **options):
        getattr(self, f"_{action}")(**options)

    def _register(self, agent_id, role, interval=None, **_):
        try:
            agent, raw = services.register_agent(
                agent_id, role, heartbeat_interval=interval, actor="cli"
            )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        except IntegrityError:
            raise CommandError(f"agent {agent_id!r} already exists") from None
        self.stdout.write(f"registered {agent.id} ({role}); ingest token (shown once):\n{raw}")

    def _token(self, agent_id, name="", **_):
        agent = Agent.objects.filter(pk=agent_id).first()
        if agent is None:
            raise CommandError(f"no agent {agent_id!r}")
        token, raw = AgentToken.issue(agent=agent, name=name)
        self.stdout.write(f"token {token.lookup} for {agent_id} (shown once):\n{raw}")

    def _revoke(self, lookup, **_):
        if not AgentToken.revoke_lookup(lookup):
            raise CommandError(f"no token {lookup!r}")
        self.stdout.write(f"revoked {lookup}")
