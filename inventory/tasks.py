"""Celery tasks: thin callers of services. Arguments are ids only, never a key (SPEC S1)."""

import smtplib
from datetime import datetime

from celery import shared_task
from django.utils import timezone

from inventory import upload_jobs
from inventory.errors import UploadExpired
from inventory.models import InventoryUpload


@shared_task(name="inventory.tasks.process_upload")
def process_upload(upload_id: int) -> str:
    """Validate and store an admin upload in the background; returns its final status."""
    try:
        return upload_jobs.process_upload(upload_id, timezone.now()).status
    except UploadExpired:
        return InventoryUpload.Status.EXPIRED  # purged after 24 h: nothing to do


@shared_task(name="inventory.tasks.purge_abandoned_uploads")
def purge_abandoned_uploads() -> int:
    """Hourly from beat: erase the payload of admin uploads pending for over 24 hours."""
    return upload_jobs.purge_abandoned_uploads(now=timezone.now())


@shared_task(name="inventory.tasks.send_daily_inventory_report")
def send_daily_inventory_report() -> int:
    """12:00 UTC from beat (SPEC O3): counts per plan and state and the revocation backlog, to
    every active staff member. Returns how many people it was sent to."""
    from inventory.alerts import send_daily_report

    return send_daily_report(now=timezone.now())


@shared_task(
    name="inventory.tasks.send_low_stock_email",
    # A mail server that is briefly down must not lose the alert (O3); safe to repeat: the
    # alert is claimed before sending and given back when the send fails.
    autoretry_for=(smtplib.SMTPException, OSError),
    retry_backoff=30,
    retry_backoff_max=600,
    max_retries=5,
)
def send_low_stock_email(plan_id: str, alerted_at: str) -> bool:
    """After the alert's commit (SPEC O3): the staff e-mail, outside any transaction."""
    from inventory.alerts import send_low_stock_email as send

    return send(plan_id=plan_id, alerted_at=datetime.fromisoformat(alerted_at))


@shared_task(name="inventory.tasks.check_stock_health")
def check_stock_health() -> dict:
    """Daily from beat (SPEC H1): re-validate the available stock; continues a run cut off
    half-way. Another run in progress: nothing to do."""
    from inventory.errors import HealthRunInProgress
    from inventory.health import run_stock_health
    from inventory.models import StockHealthRun

    try:
        run = run_stock_health(now=timezone.now(), trigger=StockHealthRun.Trigger.BEAT)
    except HealthRunInProgress:
        return {}
    return run.counts()
