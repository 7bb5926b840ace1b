import argparse
import json

from django.core.management.base import BaseCommand, CommandError

from observability.models import ProfileKind
from observability.profiling import profile_task, profiled
from omoi_console.celery import app as celery_app
from omoi_console.top import hot_paths

MAX_SAMPLES = 100_000


def batch_size(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if not 1 <= number <= MAX_SAMPLES:
        raise argparse.ArgumentTypeError(f"{value} is not between 1 and {MAX_SAMPLES}")
    return number


class Command(BaseCommand):
    help = (
        "Run a hot path (ingest, rule-tick) or one Celery task under pyinstrument, on the "
        "configured database, and store the profile (viewable in the admin)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "target",
            help="ingest, rule-tick, or task (then --task NAME)",
            choices=[*hot_paths.HOT_PATHS, "task"],
        )
        parser.add_argument(
            "--samples", type=batch_size, default=1000, help="samples per ingest batch"
        )
        parser.add_argument(
            "--task", help="the Celery task's name, e.g. alerting.tasks.evaluate_rules"
        )
        parser.add_argument(
            "--task-args", default="[]", help="the task's positional arguments as a JSON list"
        )

    def handle(self, *args, target, samples, task, task_args, **options):
        if target == "task":
            snapshot, outcome = self._task(task, task_args)
        elif target == "ingest":
            name = f"ingest {samples}"
            with profiled(ProfileKind.COMMAND, name, requested_by="manage.py") as run:
                outcome = hot_paths.ingest(samples)
            snapshot = run.snapshot
        else:
            with profiled(ProfileKind.COMMAND, target, requested_by="manage.py") as run:
                outcome = hot_paths.rule_tick()
            snapshot = run.snapshot
        if snapshot is None:
            raise CommandError("a profiler was already running; nothing was stored")
        self.stdout.write(
            f"{snapshot.target}: {outcome} in {snapshot.duration_seconds:.3f}s\n"
            f"profile {snapshot.pk} stored: "
            f"/admin/observability/profilesnapshot/{snapshot.pk}/change/"
        )

    def _task(self, name: str | None, raw_args: str):
        if not name:
            raise CommandError("profile task needs --task NAME")
        celery_app.loader.import_default_modules()
        ours = sorted(t for t in celery_app.tasks if not t.startswith("celery."))
        if name not in ours:
            raise CommandError(f"unknown task {name!r}; known: {', '.join(ours)}")
        try:
            task_args = json.loads(raw_args)
        except ValueError:
            raise CommandError("--task-args is a JSON list") from None
        if not isinstance(task_args, list):
            raise CommandError("--task-args is a JSON list")
        try:
            snapshot = profile_task(celery_app.tasks[name], *task_args, requested_by="manage.py")
        except Exception as exc:
            # Its profile is stored all the same: how far it got is worth seeing.
            raise CommandError(f"the task failed: {type(exc).__name__}: {exc}") from None
        return snapshot, "task done"
