import json
import sys

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from inventory.errors import UnknownPlan
from inventory.upload import DEFAULT_VALIDATION_CONCURRENCY, upload_credentials


class Command(BaseCommand):
    help = (
        "Upload credentials for one plan: one `<api key>::<upstream plan id>` per line, `-` for "
        "stdin. All or nothing (SPEC I1–I3); exits 0 only when stored. Never prints a key."
    )

    def add_arguments(self, parser):
        parser.add_argument("plan_id")
        parser.add_argument("file")
        parser.add_argument("--json", action="store_true", dest="as_json")
        parser.add_argument("--concurrency", type=int, default=DEFAULT_VALIDATION_CONCURRENCY)

    def handle(self, *args, plan_id, file, as_json, concurrency, **options):
        try:
            # utf-8-sig: a byte-order mark (Windows editors) must not make line 1 "malformed".
            if file == "-":
                stdin = getattr(sys.stdin, "buffer", None)
                text = stdin.read().decode("utf-8-sig") if stdin else sys.stdin.read()
            else:
                with open(file, encoding="utf-8-sig") as handle:
                    text = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"Cannot read {file}: {exc.__class__.__name__}") from None
        try:
            report = upload_credentials(
                plan_id=plan_id,
                text=text,
                actor="system:command",
                now=timezone.now(),
                concurrency=concurrency,
            )
        except UnknownPlan:
            if as_json:
                self.stdout.write(
                    json.dumps(
                        {"stored": 0, "errors": [{"line": 0, "reason": f"unknown plan {plan_id}"}]}
                    )
                )
            raise CommandError(f"Unknown plan id {plan_id!r}.") from None
        if as_json:
            errors = report.errors or (
                [{"line": 0, "reason": report.message}] if report.message else []
            )
            self.stdout.write(json.dumps({"stored": report.stored, "errors": errors}))
        else:
            for error in report.errors:
                self.stdout.write(f"line {error['line']}: {error['reason']}")
            if report.message:
                self.stdout.write(report.message)
        if not report.ok:
            raise CommandError(
                f"Upload rejected: nothing stored ({len(report.errors)} problem(s))."
            )
        if not as_json:
            self.stdout.write(f"Stored {report.stored} credential(s) for {plan_id}.")
