import asyncio
import itertools
import logging
import random
import secrets
import signal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from omoi_console.celery import app as celery_app
from omoi_console.foundation.roles import ADMIN, grant_role
from omoi_console.top.embedded import EmbeddedApp, in_thread
from omoi_console.top.simulation import SimulatedFleet, fleet_prefix, register_fleet, retire_fleet

DEMO_USER = "demo"


def create_demo_operator(password: str) -> None:
    user, _ = get_user_model().objects.get_or_create(username=DEMO_USER)
    user.set_password(password)
    user.save()
    grant_role(user, ADMIN)


class Command(BaseCommand):
    help = "Serve the console with a simulated fleet and an operator to log in as."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--agents", type=int, default=12)
        parser.add_argument("--interval", type=float, default=5.0)
        parser.add_argument(
            "--fault-every",
            type=float,
            default=60.0,
            help="silence a random worker this often, seconds (0: never)",
        )
        parser.add_argument("--password", help="password for the operator 'demo'")

    def handle(self, *args, **options):
        if options["agents"] < 1 or options["interval"] <= 0:
            raise CommandError("--agents must be at least 1 and --interval positive")
        if settings.PRODUCTION:
            raise CommandError("demo serves the embedded mode; unset DATABASE_URL / OMOI_MODE")
        call_command("migrate", interactive=False, verbosity=0)
        password = options["password"] or secrets.token_urlsafe(9)
        create_demo_operator(password)
        import omoi_console.asgi  # noqa: F401  (re-applies LOGGING; adjust after)

        for name in ("", "celery"):
            logging.getLogger(name).setLevel(logging.WARNING)
        celery_app.conf.task_always_eager = True
        self.stdout.write(
            f"Omoi Console demo on http://127.0.0.1:{options['port']}/\n"
            f"  log in as {DEMO_USER} / {password}   (Ctrl-C stops)"
        )
        if settings.EMAIL_BACKEND.endswith("filebased.EmailBackend"):
            self.stdout.write(f"  alert mail is written to {settings.EMAIL_FILE_PATH}/")
        asyncio.run(self._serve(options))

    async def _serve(self, options):
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        app = EmbeddedApp(port=options["port"])
        prefix = fleet_prefix("demo")
        agents = await in_thread(register_fleet)(prefix, options["agents"], options["interval"])
        await app.start()
        fleet = SimulatedFleet(app.base_url, agents)
        await fleet.start()
        # Take turns, so a worker is faulted again only after all the others: a
        # repeat inside the watchdog's cooldown would leave it down on purpose.
        workers = [a.id for a in agents if a.role == "worker"]
        random.shuffle(workers)
        victims = itertools.cycle(workers)
        faults: set[asyncio.Task] = set()
        try:
            while not stop.is_set():
                every = options["fault_every"]
                try:
                    await asyncio.wait_for(stop.wait(), timeout=every or None)
                except TimeoutError:
                    victim = next(victims)
                    outage = 4 * options["interval"] + 2
                    self.stdout.write(f"  fault: {victim} goes silent for {outage:g}s")
                    fault = asyncio.create_task(fleet.silence(victim, outage))
                    faults.add(fault)
                    fault.add_done_callback(faults.discard)
        finally:
            await fleet.stop()
            await app.stop()
            await in_thread(retire_fleet)([a.id for a in agents], "demo stopped")
        self.stdout.write("stopped")
