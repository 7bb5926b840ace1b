"""``manage.py policies export [-o FILE]`` and
``policies import FILE [--prune] [--dry-run] [--environment NAME]``."""

import sys

from django.core.management.base import BaseCommand, CommandError

from watchdog import policy_files


class Command(BaseCommand):
    help = (
        "Export the remediation policies and escalation chains as YAML, or import them "
        "from a YAML file (all or nothing)."
    )

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True)
        export = actions.add_parser("export", help="Write every policy and chain as YAML.")
        export.add_argument("--output", "-o", help="File to write (default: standard output).")
        load = actions.add_parser("import", help="Create or update them from a YAML file.")
        load.add_argument("file", help="The YAML file ('-' reads standard input).")
        load.add_argument(
            "--prune",
            action="store_true",
            help="Delete policies and chains the file does not name.",
        )
        load.add_argument(
            "--dry-run", action="store_true", help="Check and report; change nothing."
        )
        load.add_argument(
            "--environment",
            help="Apply this section of 'environments' (default: OMOI_ENVIRONMENT).",
        )

    def handle(self, *args, action, **options):
        if action == "export":
            text = policy_files.dump()
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
            result = policy_files.load(
                text,
                prune=options["prune"],
                dry_run=options["dry_run"],
                environment=options["environment"],
            )
        except policy_files.PolicyFileError as exc:
            raise CommandError(
                "nothing imported:\n" + "\n".join(f"  {p}" for p in exc.problems)
            ) from None
        if result.environment:
            self.stdout.write(f"environment: {result.environment}")
        verb = "would be" if options["dry_run"] else "were"
        for label, names in (
            ("created", result.created),
            ("updated", result.updated),
            ("deleted", result.deleted),
            ("unchanged", result.unchanged),
        ):
            if names:
                self.stdout.write(f"{len(names)} {verb} {label}: {', '.join(names)}")
