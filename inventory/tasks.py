"""Celery tasks: thin callers of services. Arguments are ids only, never a key (SPEC S1)."""

from celery import shared_task
from django.utils import timezone

from inventory import services


@shared_task(name="inventory.tasks.process_upload")
def process_upload(upload_id: int) -> str:
    """Validate and store an admin upload in the background; returns its final status."""
    return services.process_upload(upload_id, timezone.now()).status


@shared_task(name="inventory.tasks.send_daily_inventory_report")
def send_daily_inventory_report() -> int:
    """12:00 UTC from beat (SPEC O3): counts per plan and state and the revocation backlog, to
    every active staff member. Returns how many people it was sent to."""
    from inventory.alerts import send_daily_report

    return send_daily_report(now=timezone.now())
