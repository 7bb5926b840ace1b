import argparse
from collections import Counter

from django.core.management.base import BaseCommand, CommandError

from omoi_console.foundation.retention import service


def positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return number


def describe(counts) -> str:
    parts = [f"{n} {label}" for label, n in counts.items() if n]
    return ", ".join(parts) or "nothing"


class Command(BaseCommand):
    help = (
        "Remove records older than their retention (OMOI_RETAIN_*), in bounded batches, "
        "as the periodic job does; --dry-run only counts what would go."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--dry-run", action="store_true", help="count what would go; change nothing"
        )
        parser.add_argument(
            "--kind",
            action="append",
            dest="kinds",
            metavar="KIND",
            help="only this kind (repeatable); default every registered kind",
        )
        parser.add_argument("--batch-size", type=positive, help="rows per DELETE")
        parser.add_argument(
            "--once",
            action="store_true",
            help="one bounded run, like the periodic job, instead of repeating until done",
        )

    def handle(self, *args, dry_run=False, kinds=None, batch_size=None, once=False, **options):
        try:
            if dry_run:
                self._dry_run(kinds)
            else:
                self._prune(kinds, batch_size, once)
        except ValueError as exc:
            raise CommandError(str(exc)) from None

    def _dry_run(self, kinds):
        self.stdout.write("would prune (dry run, nothing changed):")
        for kind, counts in service.would_prune(kinds=kinds).items():
            self.stdout.write(f"  {kind}: {describe(counts)}")

    def _prune(self, kinds, batch_size, once):
        totals: dict[str, Counter] = {}
        failed = set()
        while True:
            reports = service.prune(kinds=kinds, batch_size=batch_size)
            for kind, report in reports.items():
                totals.setdefault(kind, Counter()).update(report.removed)
                if report.failed:
                    failed.add(kind)
            # Stop when nothing more is due, or a run made no progress (a failing kind).
            progressed = any(report.removed for report in reports.values())
            if once or not progressed or not any(r.more for r in reports.values()):
                break
        self.stdout.write("pruned:")
        for kind, removed in totals.items():
            note = " (failed, see the log)" if kind in failed else ""
            self.stdout.write(f"  {kind}: {describe(removed)}{note}")
        if failed:
            raise CommandError(f"pruning failed for {', '.join(sorted(failed))}")
