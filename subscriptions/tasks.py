"""Celery tasks: thin callers of services."""

from celery import shared_task
from django.utils import timezone

from subscriptions import services


@shared_task(name="subscriptions.tasks.notify_availability")
def notify_availability(plan_id: str) -> int:
    return services.notify_availability(plan_id=plan_id, now=timezone.now())
