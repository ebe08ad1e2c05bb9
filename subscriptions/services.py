"""Subscription state changes: the atomic purchase (SPEC P1–P7) and availability intents (U6).

Lock order everywhere: credit account → subscription → credential → BYOK entry.
"""

from __future__ import annotations

import logging
import smtplib
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction

from accounts.models import User
from adminops.audit import actor_for, record_event
from billing.errors import InsufficientCredits
from billing.models import LedgerEntry
from billing.services import lock_credit_account, open_credit_account, post_entry
from byok.models import ByokKey
from codingplans import crypto, sql
from inventory.services import claim_credential
from subscriptions.catalog import Plan, get_plan
from subscriptions.errors import (
    AccountInactive,
    IdempotencyKeyMissing,
    IdempotencyKeyReused,
    PlanNotFound,
    ProviderSlotOccupied,
    SoldOut,
    SubscriptionExists,
)
from subscriptions.models import (
    LIVE_STATUSES,
    AvailabilityIntent,
    ChargedTerm,
    PurchaseRequest,
    Subscription,
)
from subscriptions.selectors import in_field_order, subscription_json

logger = logging.getLogger(__name__)

MAX_IDEMPOTENCY_KEY_LENGTH = 255


@dataclass(frozen=True)
class PurchaseOutcome:
    status: int
    body: dict
    replayed: bool
    subscription_id: int


def term_description(plan_name: str, kind: str, start: datetime, end: datetime) -> str:
    return f"{plan_name} — {kind} {start:%Y-%m-%d} to {end:%Y-%m-%d}"


def _lock_idempotency_key(user_id: int, key: str) -> None:
    """Serialize requests that share (user, key): later ones wait for the first to finish and
    then find its stored outcome (P3), instead of failing with "key in use"."""
    sql.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"purchase:{user_id}:{key}"]
    )


_CHECKS_SQL = """
    SELECT
        EXISTS (SELECT 1 FROM {user} WHERE id = %(user)s AND is_active AND deleted_at IS NULL),
        EXISTS (SELECT 1 FROM {subscription} WHERE user_id = %(user)s
                AND provider_id = %(provider)s AND status = ANY(%(live)s)),
        EXISTS (SELECT 1 FROM {byok} WHERE user_id = %(user)s AND provider_id = %(provider)s)
"""


def purchase_plan(
    *, user, plan_id: object, idempotency_key: object, now: datetime
) -> PurchaseOutcome:
    """Buy a plan with credits in one transaction (P4): slot check, guarded debit, SKIP LOCKED
    claim, installed BYOK entry, charged term, active subscription, intent cleared.

    Any refusal raises before commit, so nothing is charged that would need a refund; a refused
    request stores nothing and a retry with the same key is judged afresh.

    Written as lean statements (codingplans.sql), one per row written plus the locks and one
    query for all the refusal checks: building each query through the ORM took most of a
    purchase's time (issue 8: purchase throughput).
    """
    if not isinstance(idempotency_key, str) or not idempotency_key.strip():
        raise IdempotencyKeyMissing()
    idempotency_key = idempotency_key.strip()
    if len(idempotency_key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise IdempotencyKeyMissing("The Idempotency-Key must be at most 255 characters.")
    plan = get_plan(plan_id)
    if plan is None:
        raise PlanNotFound()

    with transaction.atomic(durable=True):
        _lock_idempotency_key(user.pk, idempotency_key)
        previous = sql.select_one(
            PurchaseRequest, "user_id = %s AND idempotency_key = %s", [user.pk, idempotency_key]
        )
        if previous is not None:
            if previous.plan_id != plan.plan_id:
                raise IdempotencyKeyReused()
            return PurchaseOutcome(
                previous.response_status,
                in_field_order(previous.response_body),
                True,
                previous.subscription_id,
            )
        # Lock order: credit account first. This also serializes one user's purchases, so two
        # plans bought at once resolve to one subscription and one `subscription_exists`.
        balance = _lock_credit_account(user, now=now)
        # Read after the lock: an account deleted, or a plan bought, while this request waited
        # for it is seen here.
        active, live, slot_taken = sql.execute(
            _CHECKS_SQL.format(
                user=sql.table(User),
                subscription=sql.table(Subscription),
                byok=sql.table(ByokKey),
            ),
            {"user": user.pk, "provider": plan.provider_id, "live": list(LIVE_STATUSES)},
        )
        if not active:
            raise AccountInactive()
        if live:
            raise SubscriptionExists()
        if slot_taken:
            raise ProviderSlotOccupied()
        if balance < plan.price_micros:
            raise InsufficientCredits()
        subscription, entry_id = _activate(user=user, plan=plan, now=now)
        body = subscription_json(subscription, byok_key_id=entry_id)
        sql.insert(
            PurchaseRequest,
            user_id=user.pk,
            idempotency_key=idempotency_key,
            plan_id=plan.plan_id,
            subscription_id=subscription.pk,
            response_status=201,
            response_body=body,
            created_at=now,
        )
        transaction.on_commit(lambda: _after_assignment(plan.plan_id, now), robust=True)
    return PurchaseOutcome(201, body, False, subscription.pk)


def _lock_credit_account(user, *, now: datetime) -> int:
    """Lock the buyer's credit account (opening it at a first purchase); returns the balance."""
    balance = lock_credit_account(user_id=user.pk)
    if balance is None:
        open_credit_account(user=user, now=now)
        balance = lock_credit_account(user_id=user.pk)
    return balance


def _after_assignment(plan_id: str, now: datetime) -> None:
    """Tell staff once when this assignment took the plan below its low-stock threshold (O3)."""
    from inventory.alerts import check_low_stock

    check_low_stock(plan_id=plan_id, now=now)


def _activate(*, user, plan: Plan, now: datetime) -> tuple[Subscription, int]:
    """Steps 2–7 of P4, inside purchase_plan's transaction, under the account lock and after
    the balance check. Returns the subscription and the id of its installed BYOK entry.

    The credential is claimed before the debit is written so the ledger entry can name the
    subscription in the same statement; inside the one transaction the order cannot be
    observed, and the balance was checked first, so `insufficient_credits` still wins over
    `sold_out` (P5)."""
    period_end = now + timedelta(days=plan.billing_period_days)
    actor = actor_for(user)
    credential = claim_credential(plan_id=plan.plan_id, user=user, now=now)
    if credential is None:
        raise SoldOut()
    subscription = Subscription(
        user_id=user.pk,
        plan_id=plan.plan_id,
        provider_id=plan.provider_id,
        status=Subscription.Status.ACTIVE,
        price_micros=plan.price_micros,
        billing_period_days=plan.billing_period_days,
        credential_id=credential.id,
        current_period_start=now,
        current_period_end=period_end,
        cancel_at_period_end=False,
        created_at=now,
        updated_at=now,
    )
    subscription.pk = sql.insert(
        Subscription,
        **{f: getattr(subscription, f) for f in _NEW_SUBSCRIPTION_FIELDS},
    )
    subscription._state.adding = False
    entry = post_entry(
        user=user,
        amount_micros=-plan.price_micros,
        kind=LedgerEntry.Kind.PURCHASE,
        actor=actor,
        now=now,
        reason=f"{plan.name} — first {plan.billing_period_days} days",
        reference=f"subscription:{subscription.pk}",
    )
    plaintext = crypto.decrypt(credential.encrypted_key)
    installed_id = sql.insert_unless_conflict(
        ByokKey,
        user_id=user.pk,
        provider_id=plan.provider_id,
        encrypted_key=crypto.encrypt(plaintext),
        key_hint=crypto.key_hint(plaintext),
        enabled=True,
        managed_by=ByokKey.ManagedBy.CODING_PLAN,
        subscription_id=subscription.pk,
        created_at=now,
        updated_at=now,
    )
    del plaintext
    if installed_id is None:
        # The customer added their own key after our slot check: the whole purchase rolls back.
        raise ProviderSlotOccupied()
    sql.insert(
        ChargedTerm,
        subscription_id=subscription.pk,
        amount_micros=plan.price_micros,
        period_start=now,
        period_end=period_end,
        charged_at=now,
        description=term_description(plan.name, "purchase", now, period_end),
        ledger_entry_id=entry.pk,
    )
    sql.execute(
        f"DELETE FROM {sql.table(AvailabilityIntent)} WHERE user_id = %s AND plan_id = %s",  # noqa: S608 - table name from the model
        [user.pk, plan.plan_id],
    )
    record_event(
        actor=actor,
        subject=subscription,
        event_type="subscription.purchased",
        now=now,
        new={
            "plan_id": plan.plan_id,
            "status": subscription.status,
            "price_micros": plan.price_micros,
            "credential_id": credential.id,
            "current_period_end": period_end.isoformat(),
        },
    )
    record_event(
        actor=actor,
        subject=("inventory.credential", credential.id),
        event_type="credential.assigned",
        now=now,
        old={"state": "available"},
        new={"state": "assigned", "subscription_id": subscription.pk},
    )
    return subscription, installed_id


_NEW_SUBSCRIPTION_FIELDS = (
    "user_id",
    "plan_id",
    "provider_id",
    "status",
    "price_micros",
    "billing_period_days",
    "credential_id",
    "current_period_start",
    "current_period_end",
    "cancel_at_period_end",
    "created_at",
    "updated_at",
)


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
