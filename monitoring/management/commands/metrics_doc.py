"""Write docs/monitoring/metrics.md from the metrics catalogue (or check it is current)."""

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from monitoring.catalog import render_markdown

DOC = Path(settings.BASE_DIR) / "docs" / "monitoring" / "metrics.md"


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser):
        parser.add_argument("--check", action="store_true", help="fail when the page is stale")

    def handle(self, *args, check=False, **options):
        text = render_markdown()
        if check:
            if not DOC.exists() or DOC.read_text() != text:
                raise CommandError(f"{DOC.name} is stale: run manage.py metrics_doc")
            self.stdout.write(f"{DOC.name} is current")
            return
        DOC.write_text(text)
        self.stdout.write(f"wrote {DOC}")
