"""Celery tasks: thin callers of services."""

import smtplib

from celery import shared_task
from django.utils import timezone

from subscriptions import intents


@shared_task(
    name="subscriptions.tasks.notify_availability",
    # A mail server that is briefly down must not lose a restock's notices (U6). Safe to repeat:
    # each intent is marked notified in the transaction that sends its e-mail, so a retry only
    # reaches the holders not yet told.
    autoretry_for=(smtplib.SMTPException, OSError),
    retry_backoff=30,
    retry_backoff_max=600,
    max_retries=5,
)
def notify_availability(plan_id: str) -> int:
    return intents.notify_availability(plan_id=plan_id, now=timezone.now())


@shared_task(name="subscriptions.tasks.run_billing_sweep")
def run_billing_sweep() -> dict:
    """Hourly from beat (SPEC L1); the clock is read once, here, and passed down."""
    from subscriptions.models import SweepRun
    from subscriptions.sweep import run_billing_sweep as sweep

    run = sweep(now=timezone.now(), trigger=SweepRun.Trigger.BEAT)
    return run.counts


@shared_task(
    name="subscriptions.tasks.send_customer_email",
    # SPEC E1: a mail server that is briefly down delays a receipt, never loses it. Safe to
    # repeat: the task claims its CustomerEmail row first, so a retried or duplicated task never
    # sends twice.
    autoretry_for=(smtplib.SMTPException, OSError),
    retry_backoff=30,
    retry_backoff_max=600,
    max_retries=5,
)
def send_customer_email(email_id: int) -> str:
    from subscriptions.emails import send_customer_email as send

    return send(email_id=email_id, now=timezone.now())


@shared_task(name="subscriptions.tasks.replace_credential")
def replace_credential(subscription_id: int) -> str:
    """Queued when a subscription's credential problem is raised (SPEC H3): replace its key, or
    tell staff once that there is no stock."""
    from subscriptions.replacement import replace_or_alert

    return replace_or_alert(subscription_id=subscription_id, now=timezone.now())


@shared_task(name="subscriptions.tasks.replace_flagged")
def replace_flagged(plan_id: str) -> dict:
    """A plan was restocked: replace the dead keys of its flagged subscriptions (SPEC H3)."""
    from subscriptions.replacement import replace_flagged as replace

    return replace(plan_id=plan_id, now=timezone.now())


@shared_task(name="subscriptions.tasks.review_credential_problems")
def review_credential_problems() -> dict:
    """Hourly from beat: retry replacements, and the service credit of problems open for more
    than 24 hours (SPEC H3, H4)."""
    from subscriptions.replacement import review_credential_problems as review

    return review(now=timezone.now())


@shared_task(name="subscriptions.tasks.send_customer_emails")
def send_customer_emails(email_ids: list[int]) -> dict:
    """A batch of recorded e-mails (the sweep's renewal receipts, issue 20); each is claimed and
    sent as `send_customer_email` does, and one that fails is queued again on its own."""
    from subscriptions.emails import send_customer_emails as send

    return send(email_ids=list(email_ids), now=timezone.now())
