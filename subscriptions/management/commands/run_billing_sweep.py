import json

from django.core.management.base import BaseCommand
from django.utils import timezone

from subscriptions.models import SweepRun
from subscriptions.sweep import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_TIME_BUDGET_SECONDS,
    run_billing_sweep,
)


class Command(BaseCommand):
    help = "Run one billing sweep now, at the process's current time; prints the L1 counts as JSON."

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
        parser.add_argument("--time-budget", type=float, default=DEFAULT_TIME_BUDGET_SECONDS)

    def handle(self, *args, batch_size, time_budget, **options):
        run = run_billing_sweep(
            now=timezone.now(),
            trigger=SweepRun.Trigger.COMMAND,
            batch_size=max(1, batch_size),
            time_budget_seconds=time_budget,
        )
        self.stdout.write(json.dumps(run.counts))
