"""The billing sweep (SPEC L1–L4, L8): every due subscription is renewed, put in grace with one
auto top-up attempt, or ended; a SweepRun records the counts.

Services in DESIGN.md's sense. Lock order: credit account → subscription → credential → BYOK
entry (subscriptions.actions.lock_subscription).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from adminops.audit import SYSTEM_SWEEP, event_values, events_insert
from billing.models import CreditAccount, LedgerEntry, TopUpAttempt
from billing.services import (
    charge_top_up_after_commit,
    entry_ctes,
    start_top_up,
    top_up_blocker,
)
from codingplans import sql
from subscriptions import emails, notifications
from subscriptions.actions import (
    apply_changes,
    audit_state,
    end_subscription,
    lock_subscription,
    save_transition,
)
from subscriptions.models import ChargedTerm, Subscription, SweepRun, term_description
from subscriptions.selectors import due_subscriptions, is_due

logger = logging.getLogger(__name__)

GRACE_PERIOD = timedelta(hours=24)
DEFAULT_BATCH_SIZE = 1_000
DEFAULT_TIME_BUDGET_SECONDS = 600


@dataclass
class SweepCounts:
    renewed: int = 0
    past_due: int = 0
    terminated: int = 0
    canceled: int = 0
    auto_top_up_triggered: int = 0
    errors: int = 0
    reminders_sent: int = 0  # SPEC E1, beyond L1's keys
    error_items: list[dict[str, object]] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {key: getattr(self, key) for key in SweepRun.COUNT_KEYS}

    def add(self, other: SweepCounts) -> None:
        for key in SweepRun.COUNT_KEYS:
            setattr(self, key, getattr(self, key) + getattr(other, key))


def process_due_subscription(
    subscription_id: int, *, now: datetime, counts: SweepCounts, user_id: int | None = None
) -> bool:
    """Act on one due subscription in its own transaction (L2–L5). A no-op when it is no longer
    due or another sweep holds it — so concurrent or repeated sweeps never act twice (L8).
    Returns True when it was renewed into a period that has also ended (a backlog after an
    outage): the caller acts on it again, each term in its own transaction.

    The outcome is added to `counts` only once the transaction has committed: a failure at
    commit (a deferred constraint, a lost connection) is counted as an error, not also as a
    renewal or termination that never happened (L1)."""
    outcome = SweepCounts()
    with transaction.atomic(durable=True):
        again = _process_locked(subscription_id, now=now, counts=outcome, user_id=user_id)
    counts.add(outcome)
    return again


def _process_locked(
    subscription_id: int, *, now: datetime, counts: SweepCounts, user_id: int | None
) -> bool:
    subscription = lock_subscription(subscription_id, skip_locked=True, user_id=user_id)
    if subscription is None or not is_due(subscription, now=now):
        return False
    if subscription.cancel_at_period_end:
        end_subscription(
            subscription=subscription,
            reason=Subscription.Reason.USER_REQUESTED,
            actor=SYSTEM_SWEEP,
            now=now,
        )
        counts.canceled += 1  # the plan-ended e-mail is end_subscription's (SPEC E1)
        return False
    renewal = _renew(subscription, now=now)
    if renewal is not None:
        counts.renewed += 1
        if renewal.receipt_id is not None:  # None: this renewal already had its receipt
            emails.deliver_after_commit(renewal.receipt_id)  # SPEC E1, recorded by _renew
        return is_due(subscription, now=now)
    if subscription.status == Subscription.Status.ACTIVE:
        account = sql.select_one(CreditAccount, "user_id = %s", [subscription.user_id])
        if account is None:  # as the ORM's get() said: this subscription's error (L1)
            raise CreditAccount.DoesNotExist(f"no credit account for user {subscription.user_id}")
        if account.auto_top_up_enabled:
            _enter_grace(subscription, account=account, now=now, counts=counts)
            return False
        reason = Subscription.Reason.INSUFFICIENT_CREDITS
    elif subscription.grace_deadline is not None and now < subscription.grace_deadline:
        _resume_pending_top_up(subscription, now=now)
        return False  # still within grace: wait for funds
    else:
        reason = Subscription.Reason.PAYMENT_FAILED
    end_subscription(subscription=subscription, reason=reason, actor=SYSTEM_SWEEP, now=now)
    counts.terminated += 1  # the plan-ended e-mail is end_subscription's (SPEC E1)
    return False


# L2 in one statement: the guarded debit and its ledger entry (billing's own CTEs), then the
# charged term, the extended period, the audit event and the receipt's e-mail row (SPEC E1),
# each written only if the debit was. The period's parameters are named after the fields they
# write: `_renew` passes its one `changes` mapping as they are.
_RENEW_SQL = """
    WITH {entry_ctes},
    term AS (
        INSERT INTO {term} (subscription_id, amount_micros, period_start, period_end,
            charged_at, description, ledger_entry_id)
        SELECT %(subscription_id)s, %(debit)s, %(current_period_start)s,
            %(current_period_end)s, %(now)s, %(description)s, id
        FROM entry
    ),
    period AS (
        UPDATE {subscription} SET status = %(status)s,
            current_period_start = %(current_period_start)s,
            current_period_end = %(current_period_end)s, grace_deadline = %(grace_deadline)s,
            updated_at = %(updated_at)s
        WHERE id = %(subscription_id)s AND EXISTS (SELECT 1 FROM entry)
    ),
    {audit},
    {receipt}
    SELECT entry.id, (SELECT id FROM receipt) AS receipt_id FROM entry
"""


def _renew(subscription: Subscription, *, now: datetime) -> Any:
    """One term at the recorded price, from the previous period end (L2). None when short,
    and then nothing was written and the transaction goes on; else the row (`receipt_id`: the
    receipt's e-mail row, None when the event already had one).

    One statement for the debit, its ledger entry, the term, the period, the audit event and
    the receipt's e-mail row (after the two lock statements): the sweep's throughput is this
    function's (issue 8). The receipt is recorded in it rather than after the commit (issue 20):
    no round trip and commit of its own per renewal, and no window in which a renewal is
    committed with no receipt recorded.
    The new values are written once (`changes`): the statement's parameters, the audit event's
    `new` and, once the statement has run, the object in memory."""
    start = subscription.current_period_end
    end = start + timedelta(days=subscription.billing_period_days)
    plan_name = subscription.plan_name  # a catalog look-up: once
    changes = {
        "status": Subscription.Status.ACTIVE,
        "current_period_start": start,
        "current_period_end": end,
        "grace_deadline": None,
        "updated_at": now,
    }
    audit, audit_params = events_insert(
        "audit",
        [
            event_values(
                actor=SYSTEM_SWEEP,
                subject=subscription,
                event_type="subscription.renewed",
                now=now,
                old=audit_state(subscription),
                new={
                    **audit_state(subscription, changes),
                    "charged_micros": subscription.price_micros,
                },
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
            "reason": f"{plan_name} renewal"[:255],
            "actor": SYSTEM_SWEEP,
            "reference": f"subscription:{subscription.pk}",
            "now": now,
            # the term and the period
            "subscription_id": subscription.pk,
            "description": term_description(plan_name, "renewal", start, end),
            **changes,
            **audit_params,
            # SPEC E1: the receipt, its event the new period's start
            **emails.record_params("receipt", emails.RENEWAL_RECEIPT, subscription.pk, start),
        },
    )
    if row is not None:
        apply_changes(subscription, changes)
    return row


@cache
def _renew_sql(audit: str) -> str:
    return _RENEW_SQL.format(
        entry_ctes=entry_ctes(debit=True),
        term=sql.table(ChargedTerm),
        subscription=sql.table(Subscription),
        audit=audit,
        receipt=emails.record_cte("receipt", source="entry"),
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
    save_transition(
        subscription,
        {
            "status": Subscription.Status.PAST_DUE,
            "grace_deadline": due_at + GRACE_PERIOD,
            # this term's one attempt is spent (or was already)
            "top_up_attempted_for": due_at,
            "updated_at": now,
        },
        actor=SYSTEM_SWEEP,
        event_type="subscription.past_due",
        now=now,
    )
    counts.past_due += 1
    if started:
        return  # the past-due e-mail follows the top-up's outcome (receivers.top_up_outcome)
    blocker = "" if attempted else top_up_blocker(user_id=subscription.user_id)
    notifications.payment_needed(subscription, top_up_attempted=attempted, blocker=blocker)


def run_billing_sweep(
    *,
    now: datetime,
    trigger: str = SweepRun.Trigger.OTHER,
    batch_size: int = DEFAULT_BATCH_SIZE,
    time_budget_seconds: float = DEFAULT_TIME_BUDGET_SECONDS,
) -> SweepRun:
    """Process every due subscription in stable (period end, id) order, batch after batch,
    until none is left or the time budget is spent (L1). Keyset pagination moves forward, so one
    waiting in grace is not retried in a loop; a subscription renewed into a still-past period
    is renewed again at once (a backlog after an outage drains), since its new period end may
    sort before the cursor (a later row of the same batch with that end and a higher id, found
    by the lifecycle state machine)."""
    # started_at/finished_at are wall-clock times (how long the run took, O2); `as_of` is the
    # clock the run judged due-ness by, which tests and back-fills pass in.
    run = SweepRun.objects.create(trigger=trigger, started_at=timezone.now(), as_of=now, counts={})
    counts = SweepCounts()
    deadline = time.monotonic() + time_budget_seconds
    with emails.batched_delivery():  # the renewal receipts, a task per hundred (issue 20)
        _sweep_due(now=now, counts=counts, batch_size=batch_size, deadline=deadline)
    # SPEC E1: renewal reminders (keyset-batched like the due subscriptions) and e-mails that a
    # crashed task left unsent.
    counts.reminders_sent += emails.sweep_emails(now=now, batch_size=batch_size, deadline=deadline)
    run.finished_at = timezone.now()
    run.counts = counts.as_dict()
    run.errors = counts.error_items[:1000]
    run.save(update_fields=["finished_at", "counts", "errors"])
    return run


def _sweep_due(*, now: datetime, counts: SweepCounts, batch_size: int, deadline: float) -> None:
    cursor: tuple[datetime, int] | None = None
    while time.monotonic() < deadline:
        batch = due_subscriptions(now).order_by("current_period_end", "id")
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
                # A term renewed into a period that has also ended is renewed again now: the
                # keyset cursor may already be past its new period end (L1: a backlog drains
                # in one run).
                while process_due_subscription(
                    subscription_id, now=now, counts=counts, user_id=user_id
                ):
                    if time.monotonic() >= deadline:
                        break
            except Exception as exc:
                counts.errors += 1
                counts.error_items.append(
                    {"subscription_id": subscription_id, "error": exc.__class__.__name__}
                )
                logger.exception("billing sweep failed for subscription %s", subscription_id)
