"""Celery tasks: thin callers of services."""

from celery import shared_task
from django.utils import timezone

from payments import services


@shared_task(name="payments.tasks.sync_pending_refunds")
def sync_pending_refunds() -> dict[str, int]:
    """Hourly (beat): settle refunds Stripe has left pending, or send again those it never got
    (SPEC M5). Safe to repeat."""
    return services.sync_pending_refunds(now=timezone.now())
