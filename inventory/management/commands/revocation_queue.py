import json
from datetime import UTC

from django.core.management.base import BaseCommand

from inventory.selectors import revocation_queue


def _iso(value) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Command(BaseCommand):
    help = (
        "Credentials to deprovision at their provider (revocation_pending and revocation_failed), "
        "oldest first, with their upstream plan ids (SPEC R1)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", dest="as_json")

    def handle(self, *args, as_json, **options):
        rows = revocation_queue()
        items = [
            {
                "id": row.pk,
                "plan_id": row.plan_id,
                "state": row.state,
                "upstream_plan_id": row.upstream_plan_id,
                "requested_at": _iso(row.revocation_requested_at),
                "attempts": row.revocation_attempts,
            }
            for row in rows.iterator(chunk_size=500)
        ]
        if as_json:
            self.stdout.write(json.dumps({"items": items}))
            return
        if not items:
            self.stdout.write("The revocation queue is empty.")
            return
        self.stdout.write(f"{len(items)} credential(s) to deprovision, oldest first:")
        for item in items:
            self.stdout.write(
                f"#{item['id']}  {item['state']:<18}  {item['plan_id']}  "
                f"upstream={item['upstream_plan_id']}  requested={item['requested_at']}  "
                f"attempts={item['attempts']}"
            )
