"""``manage.py rules export [-o FILE]`` and ``rules import FILE [--prune] [--dry-run]``."""

import sys

from django.core.management.base import BaseCommand, CommandError

from alerting import rule_files


class Command(BaseCommand):
    help = "Export the alert rules as YAML, or import them from a YAML file (all or nothing)."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True)
        export = actions.add_parser("export", help="Write every rule as YAML.")
        export.add_argument("--output", "-o", help="File to write (default: standard output).")
        load = actions.add_parser("import", help="Create or update rules from a YAML file.")
        load.add_argument("file", help="The YAML file ('-' reads standard input).")
        load.add_argument(
            "--prune", action="store_true", help="Delete rules the file does not name."
        )
        load.add_argument(
            "--dry-run", action="store_true", help="Check and report; change nothing."
        )

    def handle(self, *args, action, **options):
        if action == "export":
            text = rule_files.dump()
            if options["output"]:
                with open(options["output"], "w", encoding="utf-8") as out:
                    out.write(text)
            else:
                self.stdout.write(text, ending="")
            return
        source = options["file"]
        try:
            if source == "-":
                text = sys.stdin.read()
            else:
                with open(source, encoding="utf-8") as file:
                    text = file.read()
        except OSError as exc:
            raise CommandError(f"cannot read {source}: {exc.strerror}") from None
        try:
            result = rule_files.load(text, prune=options["prune"], dry_run=options["dry_run"])
        except rule_files.RuleFileError as exc:
            raise CommandError(
                "nothing imported:\n" + "\n".join(f"  {p}" for p in exc.problems)
            ) from None
        verb = "would be" if options["dry_run"] else "were"
        for label, names in (
            ("created", result.created),
            ("updated", result.updated),
            ("deleted", result.deleted),
            ("unchanged", result.unchanged),
        ):
            if names:
                self.stdout.write(f"{len(names)} {verb} {label}: {', '.join(names)}")
