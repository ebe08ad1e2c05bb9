import json

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from codingplans.errors import DomainError
from inventory.health import run_stock_health
from inventory.models import StockHealthRun


class Command(BaseCommand):
    help = (
        "Re-validate every available credential now (SPEC H1): keys their provider rejects are "
        "quarantined; a run cut off half-way is continued. --json: "
        '{"checked": n, "quarantined": n, "errors": n}.'
    )

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", dest="as_json")

    def handle(self, *args, as_json, **options):
        try:
            run = run_stock_health(
                now=timezone.now(),
                trigger=StockHealthRun.Trigger.COMMAND,
                clock=timezone.now,
            )
        except DomainError as exc:
            raise CommandError(f"{exc.message} ({exc.code})") from None
        counts = run.counts()
        if as_json:
            self.stdout.write(json.dumps(counts))
            return
        self.stdout.write(
            f"Stock health run #{run.pk}: checked {counts['checked']}, quarantined "
            f"{counts['quarantined']}, errors {counts['errors']}"
            + (f" (continued {run.resumed} time(s))" if run.resumed else "")
            + "."
        )
