import asyncio
import logging
import signal
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.test.utils import override_settings

from observability.store import StoreLogHandler
from omoi_console.celery import app as celery_app
from omoi_console.top.gameday import GameDay, Options

SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


@contextmanager
def quiet_terminal(quiet: bool):
    """Only errors on the terminal, where the timeline is printed, while the block runs.

    The handlers are quietened, not the loggers: the console's own store still
    keeps the run's lines, so the loop's trace shows its logs beside its spans.
    """
    handlers = [h for h in logging.getLogger().handlers if not isinstance(h, StoreLogHandler)]
    levels = [handler.level for handler in handlers]
    if quiet:
        for handler in handlers:
            handler.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for handler, level in zip(handlers, levels, strict=True):
            handler.setLevel(level)


class Command(BaseCommand):
    help = (
        "Run a simulated fleet through a fault and prove the loop: heartbeat lost -> alert -> "
        "notification -> remediation -> recovery -> resolved. Exits 1 when a stage is missing "
        "or an objective is missed."
    )

    def add_arguments(self, parser):
        parser.add_argument("--agents", type=int, default=20, help="fleet size (default 20)")
        parser.add_argument(
            "--interval", type=float, default=5.0, help="heartbeat interval, seconds (default 5)"
        )
        parser.add_argument(
            "--objective",
            type=float,
            help="max seconds from the fault to recovery (default: FAILED deadline + 10)",
        )
        parser.add_argument("--outage", type=float, help="seconds the faulty agent stays silent")
        parser.add_argument(
            "--watchdog",
            choices=["on", "off", "dry-run"],
            help="override OMOI_WATCHDOG_MODE for this run",
        )
        parser.add_argument("--report", type=Path, help="JSON report path")

    def handle(self, *args, **options):
        if options["agents"] < 1 or options["interval"] <= 0:
            raise CommandError("--agents must be at least 1 and --interval positive")
        call_command("migrate", interactive=False, verbosity=0)
        # Importing the ASGI app re-applies LOGGING, so quieten the log only after it.
        import omoi_console.asgi  # noqa: F401

        quiet = options["verbosity"] < 2
        gameday = GameDay(
            Options(
                agents=options["agents"],
                interval=options["interval"],
                objective=options["objective"],
                outage=options["outage"],
            ),
            write=self.stdout.write,
            log_level=logging.ERROR if quiet else logging.INFO,
        )
        overrides = {
            "WATCHDOG_MODE": options["watchdog"] or settings.WATCHDOG_MODE,
            # The in-process server listens on loopback only.
            "ALLOWED_HOSTS": [*settings.ALLOWED_HOSTS, "127.0.0.1"],
        }
        if not settings.EMAIL_HOST:
            # Without SMTP, keep mail in memory rather than printing it over the timeline.
            overrides["EMAIL_BACKEND"] = "django.core.mail.backends.locmem.EmailBackend"
        # The gameday brings its own workers: tasks run in-process, the ticker is beat.
        eager = celery_app.conf.task_always_eager
        celery_app.conf.task_always_eager = True
        try:
            with override_settings(**overrides), quiet_terminal(quiet):
                received = asyncio.run(self._run(gameday))
        finally:
            celery_app.conf.task_always_eager = eager
        report_path = options["report"] or settings.DATA_DIR / "gameday" / f"{gameday.run_id}.json"
        if received is not None:
            gameday.report.failures.insert(0, f"interrupted by {received.name}")
            gameday.report.passed = False
        self.stdout.write(gameday.render())
        gameday.write_report(report_path)
        self.stdout.write(f"  report: {report_path}")
        if received is not None:
            raise SystemExit(SIGNAL_EXIT[received])
        if not gameday.report.passed:
            raise CommandError("gameday failed: " + "; ".join(gameday.report.failures))

    async def _run(self, gameday: GameDay) -> signal.Signals | None:
        loop = asyncio.get_running_loop()
        main = asyncio.current_task()
        received: list[signal.Signals] = []

        def interrupt(sig):
            received.append(sig)
            main.cancel()

        for sig in SIGNAL_EXIT:
            loop.add_signal_handler(sig, interrupt, sig)
        try:
            await gameday.run()
        except asyncio.CancelledError:
            if not received:
                raise
        finally:
            for sig in SIGNAL_EXIT:
                loop.remove_signal_handler(sig)
        return received[0] if received else None
