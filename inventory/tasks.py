"""Celery tasks: thin callers of services. Arguments are ids only, never a key (SPEC S1)."""

from celery import shared_task
from django.utils import timezone

from inventory import services


@shared_task(name="inventory.tasks.process_upload")
def process_upload(upload_id: int) -> str:
    """Validate and store an admin upload in the background; returns its final status."""
    return services.process_upload(upload_id, timezone.now()).status
