import json

from django.core.management.base import BaseCommand

from inventory.selectors import STATES, counts_by_plan


class Command(BaseCommand):
    help = "Credential counts per plan and state (SPEC 11.2)."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", dest="as_json")

    def handle(self, *args, as_json, **options):
        counts = counts_by_plan()
        if as_json:
            self.stdout.write(json.dumps({"plans": counts}))
            return
        width = max(len(p) for p in counts) if counts else 10
        self.stdout.write("plan".ljust(width) + "  " + "  ".join(s.rjust(8) for s in STATES))
        for plan_id, row in counts.items():
            self.stdout.write(
                plan_id.ljust(width)
                + "  "
                + "  ".join(str(row[s]).rjust(len(s) if len(s) > 8 else 8) for s in STATES)
            )
