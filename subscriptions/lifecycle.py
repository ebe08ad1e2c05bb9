"""Lifecycle state changes after a purchase (SPEC L1–L8, D1 via accounts): the billing sweep,
renewal, grace and auto top-up, cancellation, resume and operator termination.

These are services in DESIGN.md's sense (kept apart from the purchase in services.py only for
size). Lock order: credit account → subscription → credential → BYOK entry.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from adminops.audit import SYSTEM_SWEEP, actor_for, event_values, events_insert, record_event
from billing.models import CreditAccount, LedgerEntry, TopUpAttempt
from billing.services import (
    charge_top_up_after_commit,
    entry_ctes,
    lock_credit_account,
    start_top_up,
    top_up_blocker,
)
from byok.services import remove_installed_entry
from codingplans import sql
from codingplans.errors import DomainError
from inventory.models import Credential
from inventory.services import request_revocation
from subscriptions.errors import SubscriptionNotFound
from subscriptions.models import (
    LIVE_STATUSES,
    AvailabilityIntent,
    ChargedTerm,
    Subscription,
    SweepRun,
)
from subscriptions.services import term_description

logger = logging.getLogger(__name__)

GRACE_PERIOD = timedelta(hours=24)
DEFAULT_BATCH_SIZE = 1_000
DEFAULT_TIME_BUDGET_SECONDS = 600
COUNT_KEYS = ("renewed", "past_due", "terminated", "canceled", "auto_top_up_triggered", "errors")


class SubscriptionNotLive(DomainError):
    code = "subscription_not_live"
    status = 409
    default_message = "This subscription has ended; there is nothing to change."


class AlreadyCanceled(DomainError):
    code = "already_canceled"
    status = 409
    default_message = "Subscription is already canceled; nothing was changed."


class ResumeTooLate(DomainError):
    code = "subscription_not_resumable"
    status = 409
    default_message = (
        "The paid period has already ended, so the cancellation can no longer be undone."
    )


# -- shared pieces ---------------------------------------------------------------------------


def _lock(
    subscription_id: int, *, skip_locked: bool = False, user_id: int | None = None
) -> Subscription | None:
    """Lock the credit account, then the subscription (the fixed order). Two lean statements
    (codingplans.sql): the sweep takes these locks for every due subscription (issue 8)."""
    if user_id is None:
        user_id = (
            Subscription.objects.filter(pk=subscription_id)
            .values_list("user_id", flat=True)
            .first()
        )
        if user_id is None:
            return None
    lock_credit_account(user_id=user_id)
    return sql.select_one(
        Subscription,
        "id = %s AND user_id = %s",
        [subscription_id, user_id],
        lock="FOR UPDATE SKIP LOCKED" if skip_locked else "FOR UPDATE",
    )


def _state(subscription: Subscription) -> dict[str, object]:
    return {
        "status": subscription.status,
        "current_period_end": subscription.current_period_end.isoformat(),
        "cancel_at_period_end": subscription.cancel_at_period_end,
        "grace_deadline": subscription.grace_deadline.isoformat()
        if subscription.grace_deadline
        else None,
        "cancellation_reason": subscription.cancellation_reason,
    }


def end_subscription(*, subscription: Subscription, reason: str, actor: str, now: datetime) -> None:
    """Effective cancellation (L3, L5, L6, D1): status canceled, the installed entry deleted only
    if still linked (B4), the credential queued for revocation with its key erased (I5).
    Caller holds the subscription lock inside its transaction."""
    old = _state(subscription)
    subscription.status = Subscription.Status.CANCELED
    subscription.cancellation_reason = reason
    subscription.canceled_at = now
    subscription.grace_deadline = None
    subscription.updated_at = now
    subscription.save(
        update_fields=[
            "status",
            "cancellation_reason",
            "canceled_at",
            "grace_deadline",
            "updated_at",
        ]
    )
    credential = Credential.objects.select_for_update().get(pk=subscription.credential_id)
    request_revocation(credential=credential, actor=actor, now=now)
    remove_installed_entry(subscription_id=subscription.pk, actor=actor, now=now)
    record_event(
        actor=actor,
        subject=subscription,
        event_type="subscription.ended",
        now=now,
        old=old,
        new=_state(subscription),
    )


def _email_after_commit(user_id: int, subject: str, body: str) -> None:
    def send() -> None:
        from accounts.models import User

        user = User.objects.filter(pk=user_id, is_active=True).first()
        if user is None:
            return
        try:
            send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [user.email])
        except Exception:  # e-mail is best effort; the state change has committed
            logger.exception("could not send lifecycle e-mail to user %s", user_id)

    transaction.on_commit(send)


# -- the sweep -------------------------------------------------------------------------------


@dataclass
class SweepCounts:
    renewed: int = 0
    past_due: int = 0
    terminated: int = 0
    canceled: int = 0
    auto_top_up_triggered: int = 0
    errors: int = 0
    error_items: list[dict[str, object]] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {key: getattr(self, key) for key in COUNT_KEYS}

    def add(self, other: SweepCounts) -> None:
        for key in COUNT_KEYS:
            setattr(self, key, getattr(self, key) + getattr(other, key))


def _due(now: datetime):
    return Subscription.objects.filter(status__in=LIVE_STATUSES, current_period_end__lte=now)


def process_due_subscription(
    subscription_id: int, *, now: datetime, counts: SweepCounts, user_id: int | None = None
) -> None:
    """Act on one due subscription in its own transaction (L2–L5). A no-op when it is no longer
    due or another sweep holds it — so concurrent or repeated sweeps never act twice (L8).

    The outcome is added to `counts` only once the transaction has committed: a failure at
    commit (a deferred constraint, a lost connection) is counted as an error, not also as a
    renewal or termination that never happened (L1)."""
    outcome = SweepCounts()
    with transaction.atomic(durable=True):
        _process_locked(subscription_id, now=now, counts=outcome, user_id=user_id)
    counts.add(outcome)


def _process_locked(
    subscription_id: int, *, now: datetime, counts: SweepCounts, user_id: int | None
) -> None:
    subscription = _lock(subscription_id, skip_locked=True, user_id=user_id)
    if subscription is None or not subscription.is_live or subscription.current_period_end > now:
        return
    if subscription.cancel_at_period_end:
        end_subscription(
            subscription=subscription,
            reason=Subscription.Reason.USER_REQUESTED,
            actor=SYSTEM_SWEEP,
            now=now,
        )
        counts.canceled += 1
        _email_after_commit(
            subscription.user_id,
            f"Your {subscription.plan_name} has ended",
            "Your Coding Plan ended at the end of its paid period, as you asked. Its "
            "installed MiniMax key was removed from BYOK (if unchanged) and the plan's key "
            "is being revoked.",
        )
        return
    if _renew(subscription, now=now):
        counts.renewed += 1
        return
    if subscription.status == Subscription.Status.ACTIVE:
        account = CreditAccount.objects.get(user_id=subscription.user_id)
        if account.auto_top_up_enabled:
            _enter_grace(subscription, account=account, now=now, counts=counts)
            return
        reason = Subscription.Reason.INSUFFICIENT_CREDITS
    elif subscription.grace_deadline is not None and now < subscription.grace_deadline:
        _resume_pending_top_up(subscription, now=now)
        return  # still within grace: wait for funds
    else:
        reason = Subscription.Reason.PAYMENT_FAILED
    end_subscription(subscription=subscription, reason=reason, actor=SYSTEM_SWEEP, now=now)
    counts.terminated += 1
    _email_after_commit(
        subscription.user_id,
        f"Your {subscription.plan_name} has ended",
        "Your Coding Plan could not be renewed because your credits did not cover it, so it "
        "has ended. Its installed MiniMax key was removed from BYOK (if unchanged). Your own "
        "MiniMax key, if you added one, was not touched.",
    )


# L2 in one statement: the guarded debit and its ledger entry (billing's own CTEs), then the
# charged term, the extended period and the audit event, each written only if the debit was.
_RENEW_SQL = """
    WITH {entry_ctes},
    term AS (
        INSERT INTO {term} (subscription_id, amount_micros, period_start, period_end,
            charged_at, description, ledger_entry_id)
        SELECT %(subscription_id)s, %(debit)s, %(start)s, %(end)s, %(now)s, %(description)s, id
        FROM entry
    ),
    period AS (
        UPDATE {subscription} SET status = %(status)s, current_period_start = %(start)s,
            current_period_end = %(end)s, grace_deadline = NULL, updated_at = %(now)s
        WHERE id = %(subscription_id)s AND EXISTS (SELECT 1 FROM entry)
    ),
    {audit}
    SELECT id FROM entry
"""


def _renew(subscription: Subscription, *, now: datetime) -> bool:
    """One term at the recorded price, from the previous period end (L2). False when short,
    and then nothing was written and the transaction goes on.

    One statement for the debit, its ledger entry, the term, the period and the audit event
    (after the two lock statements): the sweep's throughput is this function's (issue 8)."""
    start = subscription.current_period_end
    end = start + timedelta(days=subscription.billing_period_days)
    old = _state(subscription)
    renewed = {
        **old,
        "status": Subscription.Status.ACTIVE,
        "current_period_end": end.isoformat(),
        "grace_deadline": None,
    }
    audit, audit_params = events_insert(
        "audit",
        [
            event_values(
                actor=SYSTEM_SWEEP,
                subject=subscription,
                event_type="subscription.renewed",
                now=now,
                old=old,
                new={**renewed, "charged_micros": subscription.price_micros},
            )
        ],
        source="entry",
    )
    row = sql.execute(
        _renew_sql(audit),
        {
            # billing.entry_ctes: the guarded debit and its ledger entry
            "amount": -subscription.price_micros,
            "debit": subscription.price_micros,
            "user_id": subscription.user_id,
            "kind": LedgerEntry.Kind.RENEWAL,
            "reason": f"{subscription.plan_name} renewal"[:255],
            "actor": SYSTEM_SWEEP,
            "reference": f"subscription:{subscription.pk}",
            "now": now,
            # the term and the period
            "subscription_id": subscription.pk,
            "start": start,
            "end": end,
            "status": Subscription.Status.ACTIVE,
            "description": term_description(subscription.plan_name, "renewal", start, end),
            **audit_params,
        },
    )
    if row is None:
        return False
    subscription.status = Subscription.Status.ACTIVE
    subscription.current_period_start = start
    subscription.current_period_end = end
    subscription.grace_deadline = None
    subscription.updated_at = now
    return True


@cache
def _renew_sql(audit: str) -> str:
    return _RENEW_SQL.format(
        entry_ctes=entry_ctes(debit=True),
        term=sql.table(ChargedTerm),
        subscription=sql.table(Subscription),
        audit=audit,
    )


def _resume_pending_top_up(subscription: Subscription, *, now: datetime) -> None:
    """The top-up attempt for this due term is recorded in the sweep's transaction and charged
    after the commit (S5). If the process died in between, or the processor call failed, the
    attempt is still pending: charge that same attempt again after this commit (never a second
    attempt, L4). The charge runs with no row lock held, only a pending attempt is settled
    (once), and the backend is idempotent on the attempt id, so a duplicate run is harmless."""
    attempt_id = (
        TopUpAttempt.objects.filter(
            subscription_id=subscription.pk,
            due_at=subscription.current_period_end,
            status=TopUpAttempt.Status.PENDING,
        )
        .values_list("id", flat=True)
        .first()
    )
    if attempt_id is not None:
        charge_top_up_after_commit(attempt_id=attempt_id, now=now)


def _enter_grace(
    subscription: Subscription, *, account: CreditAccount, now: datetime, counts: SweepCounts
) -> None:
    """Short of credits with auto top-up on (L4): one top-up attempt for this due term, and
    past_due until at most 24 hours after the due time."""
    old = _state(subscription)
    due_at = subscription.current_period_end
    attempted = True
    started = False
    if subscription.top_up_attempted_for != due_at:
        # None when no backend is configured (M7) or no saved card (M4): no attempt, and
        # nothing granted for free. The amount covers at least the shortfall (M4).
        if start_top_up(
            account=account,
            subscription_id=subscription.pk,
            due_at=due_at,
            now=now,
            price_micros=subscription.price_micros,
        ):
            counts.auto_top_up_triggered += 1
            started = True
        else:
            attempted = TopUpAttempt.objects.filter(
                subscription_id=subscription.pk, due_at=due_at
            ).exists()
        subscription.top_up_attempted_for = due_at
    subscription.status = Subscription.Status.PAST_DUE
    subscription.grace_deadline = due_at + GRACE_PERIOD
    subscription.updated_at = now
    subscription.save(
        update_fields=["status", "grace_deadline", "top_up_attempted_for", "updated_at"]
    )
    counts.past_due += 1
    record_event(
        actor=SYSTEM_SWEEP,
        subject=subscription,
        event_type="subscription.past_due",
        now=now,
        old=old,
        new=_state(subscription),
    )
    if started:
        return  # the past-due e-mail follows the top-up's outcome (receivers.top_up_outcome)
    blocker = "" if attempted else top_up_blocker(user_id=subscription.user_id)
    _email_after_commit(
        subscription.user_id,
        f"Payment needed for your {subscription.plan_name}",
        "Your credits did not cover this renewal. "
        + (
            "We attempted an automatic top-up. "
            if attempted
            else "Automatic top-up could not charge you: there is no saved card. Add a card "
            "(tick “Save this card for automatic top-up” when you add credits) or add credits "
            "at /credits. "
            if blocker == "no_card"
            else "Automatic top-up is not available at the moment. "
        )
        + "Add credits "
        f"before {subscription.grace_deadline:%Y-%m-%d %H:%M} UTC to keep the plan; otherwise it "
        "ends and its installed MiniMax key is removed. Your own MiniMax key is never deleted.",
    )


def run_billing_sweep(
    *,
    now: datetime,
    trigger: str = SweepRun.Trigger.OTHER,
    batch_size: int = DEFAULT_BATCH_SIZE,
    time_budget_seconds: float = DEFAULT_TIME_BUDGET_SECONDS,
) -> SweepRun:
    """Process every due subscription in stable (period end, id) order, batch after batch,
    until none is left or the time budget is spent (L1). Keyset pagination moves forward, so a
    subscription renewed into a still-past period is met again later in the same run (a backlog
    after an outage drains), while one waiting in grace is not retried in a loop."""
    # started_at/finished_at are wall-clock times (how long the run took, O2); `as_of` is the
    # clock the run judged due-ness by, which tests and back-fills pass in.
    run = SweepRun.objects.create(trigger=trigger, started_at=timezone.now(), as_of=now, counts={})
    counts = SweepCounts()
    deadline = time.monotonic() + time_budget_seconds
    cursor: tuple[datetime, int] | None = None
    while time.monotonic() < deadline:
        batch = _due(now).order_by("current_period_end", "id")
        if cursor is not None:
            batch = batch.filter(
                Q(current_period_end__gt=cursor[0])
                | Q(current_period_end=cursor[0], id__gt=cursor[1])
            )
        rows = list(batch.values_list("id", "current_period_end", "user_id")[:batch_size])
        if not rows:
            break
        for subscription_id, period_end, user_id in rows:
            cursor = (period_end, subscription_id)
            if time.monotonic() >= deadline:
                break
            try:
                process_due_subscription(subscription_id, now=now, counts=counts, user_id=user_id)
            except Exception as exc:
                counts.errors += 1
                counts.error_items.append(
                    {"subscription_id": subscription_id, "error": exc.__class__.__name__}
                )
                logger.exception("billing sweep failed for subscription %s", subscription_id)
    run.finished_at = timezone.now()
    run.counts = counts.as_dict()
    run.errors = counts.error_items[:1000]
    run.save(update_fields=["finished_at", "counts", "errors"])
    return run


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
        old = _state(subscription)
        subscription.cancel_at_period_end = cancel
        subscription.updated_at = now
        subscription.save(update_fields=["cancel_at_period_end", "updated_at"])
        record_event(
            actor=actor_for(user),
            subject=subscription,
            event_type="subscription.cancel_requested" if cancel else "subscription.resumed",
            now=now,
            old=old,
            new=_state(subscription),
        )
    return subscription


def _lock_owned(user, subscription_id: int) -> Subscription:
    owner = Subscription.objects.filter(pk=subscription_id, user=user).exists()
    subscription = _lock(subscription_id) if owner else None
    if subscription is None:
        raise SubscriptionNotFound()
    return subscription


def terminate_subscription(*, subscription_id: int, actor: str, now: datetime) -> Subscription:
    """Operator's immediate termination (L6). Never overwrites a terminal subscription: waits for
    a concurrent sweep's lock, then re-reads, so a sweep's outcome stands."""
    with transaction.atomic(durable=True):
        subscription = _lock(subscription_id)
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
        _email_after_commit(
            subscription.user_id,
            f"Your {subscription.plan_name} has ended",
            "An operator ended your Coding Plan. Its installed MiniMax key was removed from BYOK "
            "(if unchanged). Contact support if you have questions.",
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
