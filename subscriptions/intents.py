"""Availability intents (SPEC U6): "notify me when available", saved, withdrawn, and the one
e-mail each holder gets when the plan is back in stock (queued by subscriptions.receivers).
"""

from __future__ import annotations

import logging
import smtplib
from datetime import datetime

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction

from adminops.audit import actor_for, record_event
from catalog import get_plan
from subscriptions.errors import PlanNotFound
from subscriptions.models import AvailabilityIntent

logger = logging.getLogger(__name__)


def save_intent(*, user, plan_id: object, now: datetime) -> AvailabilityIntent:
    """Save "notify me" (U6). Saving again is idempotent, and re-arms a notified intent."""
    plan = get_plan(plan_id)
    if plan is None:
        raise PlanNotFound()
    with transaction.atomic(durable=True):
        intent, created = AvailabilityIntent.objects.select_for_update().get_or_create(
            user=user, plan_id=plan.plan_id, defaults={"created_at": now}
        )
        rearmed = not created and intent.notified_at is not None
        if rearmed:
            intent.notified_at = None
            intent.created_at = now
            intent.save(update_fields=["notified_at", "created_at"])
        # Saving a pending intent again changes nothing, so it writes no audit event (O1).
        if created or rearmed:
            record_event(
                actor=actor_for(user),
                subject=intent,
                event_type="intent.saved",
                now=now,
                new={"plan_id": plan.plan_id},
            )
    return intent


def withdraw_intent(*, user, plan_id: object, now: datetime) -> None:
    plan = get_plan(plan_id)
    if plan is None:
        raise PlanNotFound()
    with transaction.atomic(durable=True):
        deleted, _ = AvailabilityIntent.objects.filter(user=user, plan_id=plan.plan_id).delete()
        if deleted:
            record_event(
                actor=actor_for(user),
                subject=("subscriptions.availabilityintent", f"{user.pk}:{plan.plan_id}"),
                event_type="intent.withdrawn",
                now=now,
                old={"plan_id": plan.plan_id},
            )


def notify_availability(*, plan_id: str, now: datetime) -> int:
    """E-mail each pending intent holder once (U6). One row per transaction: the row is marked
    notified only if its e-mail went out, and a parallel run skips rows already being handled.
    One address that fails does not hold up the others; the run then raises so the task retries
    the ones left (a retry reaches only holders not yet told)."""
    plan = get_plan(plan_id)
    if plan is None:
        return 0
    sent = 0
    failed: list[int] = []
    while True:
        with transaction.atomic(durable=True):
            intent = (
                AvailabilityIntent.objects.select_for_update(skip_locked=True)
                .select_related("user")
                .filter(plan_id=plan_id, notified_at__isnull=True, user__is_active=True)
                .exclude(id__in=failed)
                .order_by("id")
                .first()
            )
            if intent is None:
                break
            try:
                send_mail(
                    subject=f"{plan.name} is available again",
                    message=(
                        f"Good news: {plan.provider_name} {plan.name} ({plan.cadence}) is back "
                        "in stock. Subscribe from your Subscription Center while it lasts.\n\n"
                        "You asked us to tell you once; save the reminder again to hear about "
                        "later restocks."
                    ),
                    from_email=settings.DEFAULT_FROM_EMAIL,
                    recipient_list=[intent.user.email],
                )
            except (smtplib.SMTPException, OSError):
                logger.warning("availability e-mail for intent %s failed; will retry", intent.pk)
                failed.append(intent.pk)
                continue
            intent.notified_at = now
            intent.save(update_fields=["notified_at"])
            record_event(
                actor="system:notify",
                subject=intent,
                event_type="intent.notified",
                now=now,
                new={"plan_id": plan_id},
            )
            sent += 1
    if failed:
        raise smtplib.SMTPException(f"{len(failed)} availability e-mail(s) could not be sent")
    return sent
