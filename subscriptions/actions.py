"""Customer and operator actions on a live subscription (SPEC L3, L5, L6, D1): cancel at period
end, resume, immediate termination, ending a subscription, and ending an account's subscriptions.
Also the pieces the billing sweep (subscriptions/sweep.py) shares with them: the subscription
lock, a transition's values and its audited state.

Services in DESIGN.md's sense. Lock order: credit account → subscription → credential → BYOK
entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from django.db import transaction

from adminops.audit import actor_for, record_event
from billing.services import account_lock_cte
from byok.services import remove_installed_entry
from codingplans import sql
from inventory.models import Credential
from inventory.services import request_revocation
from subscriptions import emails
from subscriptions.errors import (
    AlreadyCanceled,
    ResumeTooLate,
    SubscriptionNotFound,
    SubscriptionNotLive,
)
from subscriptions.models import LIVE_STATUSES, AvailabilityIntent, Subscription

# -- shared with the sweep -------------------------------------------------------------------


def lock_subscription(
    subscription_id: int, *, skip_locked: bool = False, user_id: int | None = None
) -> Subscription | None:
    """Lock the credit account, then the subscription (the fixed order). One lean statement
    (codingplans.sql; billing's lock as a CTE read in a condition PostgreSQL evaluates before it
    scans the subscription): the sweep takes these locks for every due subscription (issue 8,
    issue 20: one round trip instead of two)."""
    if user_id is None:
        user_id = (
            Subscription.objects.filter(pk=subscription_id)
            .values_list("user_id", flat=True)
            .first()
        )
        if user_id is None:
            return None
    return sql.select_one(
        Subscription,
        "id = %(id)s AND user_id = %(user_id)s AND (SELECT count(*) FROM account_lock) >= 0",
        {"id": subscription_id, "user_id": user_id},
        lock="FOR UPDATE SKIP LOCKED" if skip_locked else "FOR UPDATE",
        with_=account_lock_cte("account_lock"),
    )


# The fields an audit event of a subscription shows, before and after a transition.
AUDITED_FIELDS = (
    "status",
    "current_period_end",
    "cancel_at_period_end",
    "grace_deadline",
    "cancellation_reason",
)


def audit_state(
    subscription: Subscription, changes: Mapping[str, object] | None = None
) -> dict[str, object]:
    """The audited fields of `subscription` as they are, or as `changes` (a transition's new
    values, field name → value) will leave them; times in ISO 8601."""
    values = {name: getattr(subscription, name) for name in AUDITED_FIELDS}
    values.update((name, value) for name, value in (changes or {}).items() if name in values)
    return {
        name: value.isoformat() if isinstance(value, datetime) else value
        for name, value in values.items()
    }


def apply_changes(subscription: Subscription, changes: Mapping[str, object]) -> None:
    """Set a transition's new values on the object in memory (after they were written)."""
    for name, value in changes.items():
        setattr(subscription, name, value)


def save_transition(
    subscription: Subscription,
    changes: Mapping[str, object],
    *,
    actor: str,
    event_type: str,
    now: datetime,
) -> None:
    """Write a transition: its new values are set on the object, written (only those fields)
    and recorded as the audit event's `new`, from the one `changes` mapping. One lean UPDATE
    (codingplans.sql) rather than `save(update_fields=…)`: the sweep moves every short
    subscription through here (issue 20), and no signal listens to a Subscription's save."""
    old = audit_state(subscription)
    apply_changes(subscription, changes)
    sql.update(Subscription, subscription.pk, **changes)
    record_event(
        actor=actor,
        subject=subscription,
        event_type=event_type,
        now=now,
        old=old,
        new=audit_state(subscription),
    )


def end_subscription(*, subscription: Subscription, reason: str, actor: str, now: datetime) -> None:
    """Effective cancellation (L3, L5, L6, D1): status canceled, the installed entry deleted only
    if still linked (B4), the credential queued for revocation with its key erased (I5).
    Caller holds the subscription lock inside its transaction."""
    changes = {
        "status": Subscription.Status.CANCELED,
        "cancellation_reason": reason,
        "canceled_at": now,
        "grace_deadline": None,
        "updated_at": now,
    }
    old = audit_state(subscription)
    apply_changes(subscription, changes)
    subscription.save(update_fields=list(changes))
    credential = Credential.objects.select_for_update().get(pk=subscription.credential_id)
    request_revocation(credential=credential, actor=actor, now=now)
    remove_installed_entry(subscription_id=subscription.pk, actor=actor, now=now)
    record_event(
        actor=actor,
        subject=subscription,
        event_type="subscription.ended",
        now=now,
        old=old,
        new=audit_state(subscription),
    )
    emails.record(emails.PLAN_ENDED, subscription.pk)  # SPEC E1, with the reason


# -- customer and operator actions -----------------------------------------------------------


def cancel_at_period_end(*, user, subscription_id: int, now: datetime) -> Subscription:
    """Customer cancellation (L5): access and status stay until the period ends. Idempotent."""
    return _set_cancel_at_period_end(
        user=user, subscription_id=subscription_id, now=now, cancel=True
    )


def resume_subscription(*, user, subscription_id: int, now: datetime) -> Subscription:
    """Undo a cancellation before the period ends (L5 should). Idempotent."""
    return _set_cancel_at_period_end(
        user=user, subscription_id=subscription_id, now=now, cancel=False
    )


def _set_cancel_at_period_end(
    *, user, subscription_id: int, now: datetime, cancel: bool
) -> Subscription:
    with transaction.atomic(durable=True):
        subscription = _lock_owned(user, subscription_id)
        if not subscription.is_live:
            raise SubscriptionNotLive()
        if subscription.cancel_at_period_end == cancel:
            return subscription  # already so: nothing to change, nothing to audit
        if not cancel and now >= subscription.current_period_end:
            raise ResumeTooLate()
        save_transition(
            subscription,
            {"cancel_at_period_end": cancel, "updated_at": now},
            actor=actor_for(user),
            event_type="subscription.cancel_requested" if cancel else "subscription.resumed",
            now=now,
        )
        if cancel:
            emails.record(emails.CANCELLATION_SCHEDULED, subscription.pk, now)  # SPEC E1
    return subscription


def _lock_owned(user, subscription_id: int) -> Subscription:
    owner = Subscription.objects.filter(pk=subscription_id, user=user).exists()
    subscription = lock_subscription(subscription_id) if owner else None
    if subscription is None:
        raise SubscriptionNotFound()
    return subscription


def terminate_subscription(*, subscription_id: int, actor: str, now: datetime) -> Subscription:
    """Operator's immediate termination (L6). Never overwrites a terminal subscription: waits for
    a concurrent sweep's lock, then re-reads, so a sweep's outcome stands."""
    with transaction.atomic(durable=True):
        subscription = lock_subscription(subscription_id)
        if subscription is None:
            raise SubscriptionNotFound()
        if not subscription.is_live:
            raise AlreadyCanceled()
        end_subscription(
            subscription=subscription,
            reason=Subscription.Reason.ADMINISTRATIVE,
            actor=actor,
            now=now,
        )
    return subscription


def end_account_subscriptions(*, user, actor: str, now: datetime) -> list[int]:
    """Account deletion (D1): every live subscription ends now (account_deleted) and the
    account's availability intents go. Inside delete_account's transaction, after the credit
    account lock (the lock order); returns the ended subscriptions' ids."""
    live = list(
        Subscription.objects.select_for_update()
        .filter(user=user, status__in=LIVE_STATUSES)
        .order_by("id")
    )
    for subscription in live:
        end_subscription(
            subscription=subscription,
            reason=Subscription.Reason.ACCOUNT_DELETED,
            actor=actor,
            now=now,
        )
    AvailabilityIntent.objects.filter(user=user).delete()
    return [subscription.pk for subscription in live]
