"""A sold credential that stops working (SPEC H3, H4): the `credential_problem` flag, the
replacement of the plan's key, the staff alert when there is no stock, and the service credit
for a problem that lasted more than 24 hours.

Who raises the flag: the gateway's 401/403 and the BYOK key test of an installed entry announce
it through `byok.signals.installed_key_rejected` (received in `subscriptions.receivers`), the
quota fetch calls `flag_credential_problem` directly. The flag is raised once per problem: under
the subscription's lock, only while it is clear and only for the key the subscription holds now
(a late rejection of a key already replaced is ignored).

Replacement — queued on commit when the flag is raised, run again on restock and hourly, or a
staff action (`replace_credential` command, admin action) — is one transaction under the lock
order credit account → subscription → credential → BYOK entry: a fresh credential claimed with
SKIP LOCKED, re-encrypted into the same installed entry (same id, still linked; an entry the
customer changed or removed is left alone, only the subscription's credential changes), the old
credential to `revocation_pending` (its key erased, I5), the flag cleared, one audit event, no
charge. The customer's e-mail goes after commit. No stock: staff get one e-mail per problem.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction

from adminops.audit import record_event
from billing.services import grant_service_credit as post_service_credit
from byok.services import rekey_installed_entry
from codingplans import outages
from codingplans.money import display_usd
from inventory.alerts import check_after_commit
from inventory.models import Credential
from inventory.services import claim_credential, request_revocation
from subscriptions import notifications
from subscriptions.actions import lock_subscription
from subscriptions.errors import NoStockForReplacement, SubscriptionNotFound, SubscriptionNotLive
from subscriptions.models import LIVE_STATUSES, ChargedTerm, Subscription

logger = logging.getLogger(__name__)

SYSTEM_ACTOR = "system:stock-health"
SERVICE_CREDIT_AFTER = timedelta(hours=24)  # SPEC H4
# What a provider answers for a key it rejects (SPEC H3, G3): the same for every provider.
KEY_REJECTED_HTTP_STATUSES = frozenset({401, 403})
PROBLEM_MESSAGE = "Your plan's key stopped working; we are replacing it."


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# --- the flag ------------------------------------------------------------------------------------


def flag_credential_problem(
    *, subscription_id: int, key_fingerprint: str, source: str, now: datetime
) -> bool:
    """Raise `credential_problem` (H3) when the rejected key is the live subscription's current
    credential and the flag is clear; True when this call raised it. Replacement is queued after
    the commit."""
    with transaction.atomic(durable=True):
        subscription = (
            Subscription.objects.select_for_update()
            .filter(pk=subscription_id, status__in=LIVE_STATUSES)
            .first()
        )
        if subscription is None or subscription.credential_problem_at is not None:
            return False
        current = Credential.objects.filter(
            pk=subscription.credential_id,
            fingerprint=key_fingerprint,
            state=Credential.State.ASSIGNED,
        ).exists()
        if not current:
            return False  # a key already replaced, or not the plan's key
        subscription.credential_problem_at = now
        subscription.credential_problem_staff_emailed_at = None
        subscription.updated_at = now
        subscription.save(
            update_fields=[
                "credential_problem_at",
                "credential_problem_staff_emailed_at",
                "updated_at",
            ]
        )
        record_event(
            actor=SYSTEM_ACTOR,
            subject=subscription,
            event_type="subscription.credential_problem",
            now=now,
            old={"credential_problem_at": None},
            new={
                "credential_problem_at": _iso(now),
                "credential_id": subscription.credential_id,
                "source": source,
            },
        )
        transaction.on_commit(lambda: _queue_replacement(subscription_id), robust=True)
    return True


def _queue_replacement(subscription_id: int) -> None:
    """After the flag commits: the replacement task (which e-mails staff when there is no
    stock). With the broker down, run it here: it is safe to repeat."""
    from django.utils import timezone

    from subscriptions.tasks import replace_credential as task

    try:
        task.delay(subscription_id)
    except Exception as exc:
        outages.record("task queue", exc)
        replace_or_alert(subscription_id=subscription_id, now=timezone.now())


# --- replacement ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Replacement:
    subscription_id: int
    old_credential_id: int
    new_credential_id: int
    installed_entry_id: int | None  # None: the customer changed or removed the entry
    service_credit_micros: int = 0


def replace_credential(*, subscription_id: int, actor: str, now: datetime) -> Replacement:
    """Give a live subscription a fresh credential of its plan (H3), flagged or not (staff may
    replace a key they know is bad). NoStockForReplacement when none is available (nothing
    changes)."""
    with transaction.atomic(durable=True):
        subscription = lock_subscription(subscription_id)
        if subscription is None:
            raise SubscriptionNotFound()
        if not subscription.is_live:
            raise SubscriptionNotLive()
        claimed = claim_credential(plan_id=subscription.plan_id, user=subscription.user, now=now)
        if claimed is None:
            raise NoStockForReplacement()
        # A replacement is an assignment too: it may take the plan to its threshold (O3).
        check_after_commit(plan_id=subscription.plan_id, stock_check=claimed.stock_check, now=now)
        old = Credential.objects.select_for_update().get(pk=subscription.credential_id)
        request_revocation(credential=old, actor=actor, now=now, audit=False)
        entry_id = rekey_installed_entry(
            subscription_id=subscription.pk, encrypted_credential=claimed.encrypted_key, now=now
        )
        problem_at = subscription.credential_problem_at
        credit = 0
        if problem_at is not None and now - problem_at > SERVICE_CREDIT_AFTER:
            credit = _credit_days_lost(subscription, until=now, actor=actor, now=now)
        subscription.credential_id = claimed.id
        subscription.credential_problem_at = None
        subscription.credential_problem_staff_emailed_at = None
        subscription.updated_at = now
        subscription.save(
            update_fields=[
                "credential",
                "credential_problem_at",
                "credential_problem_staff_emailed_at",
                "service_credit_for",
                "updated_at",
            ]
        )
        record_event(
            actor=actor,
            subject=subscription,
            event_type="subscription.credential_replaced",
            now=now,
            old={
                "credential_id": old.pk,
                "credential_problem_at": _iso(problem_at),
            },
            new={
                "credential_id": claimed.id,
                "old_credential_state": old.state,
                "installed_entry_id": entry_id,
                "installed_entry_rekeyed": entry_id is not None,
                "service_credit_micros": credit,
            },
        )
        notifications.email_after_commit(
            subscription.user_id,
            f"We replaced the key of your {subscription.plan_name}",
            f"{subscription.provider_name} stopped accepting your Coding Plan's key, so we gave "
            "your plan a new one"
            + (
                f". Your installed {subscription.provider_name} entry in BYOK now uses it: nothing "
                "to do on your side."
                if entry_id is not None
                else f". Your own {subscription.provider_name} key in BYOK was not touched."
            )
            + " There is no charge for this."
            + (f" You received {display_usd(credit)} of service credit." if credit else ""),
        )
        plan_id = subscription.plan_id
        transaction.on_commit(lambda: _after_claim(plan_id, now), robust=True)
    return Replacement(
        subscription_id=subscription.pk,
        old_credential_id=old.pk,
        new_credential_id=claimed.id,
        installed_entry_id=entry_id,
        service_credit_micros=credit,
    )


def _after_claim(plan_id: str, now: datetime) -> None:
    from inventory.alerts import check_low_stock

    check_low_stock(plan_id=plan_id, now=now)


def replace_or_alert(*, subscription_id: int, now: datetime) -> str:
    """The automatic path (the task queued by the flag, the restock, the hourly review):
    `replaced`, `no_stock` (staff told once per problem) or `not_needed` (flag clear, or the
    subscription ended)."""
    flagged = Subscription.objects.filter(
        pk=subscription_id, status__in=LIVE_STATUSES, credential_problem_at__isnull=False
    ).exists()
    if not flagged:
        return "not_needed"
    try:
        replace_credential(subscription_id=subscription_id, actor=SYSTEM_ACTOR, now=now)
    except NoStockForReplacement:
        alert_staff_no_stock(subscription_id=subscription_id, now=now)
        return "no_stock"
    except (SubscriptionNotFound, SubscriptionNotLive):
        return "not_needed"
    return "replaced"


def alert_staff_no_stock(*, subscription_id: int, now: datetime) -> bool:
    """One e-mail to staff per problem when a flagged subscription cannot be given a new key
    for want of stock (H3); True when this call claimed it (sent after commit)."""
    with transaction.atomic(durable=True):
        subscription = (
            Subscription.objects.select_for_update()
            .filter(
                pk=subscription_id,
                status__in=LIVE_STATUSES,
                credential_problem_at__isnull=False,
                credential_problem_staff_emailed_at__isnull=True,
            )
            .first()
        )
        if subscription is None:
            return False
        subscription.credential_problem_staff_emailed_at = now
        subscription.save(update_fields=["credential_problem_staff_emailed_at"])
        record_event(
            actor=SYSTEM_ACTOR,
            subject=subscription,
            event_type="subscription.credential_problem_no_stock",
            now=now,
            new={"plan_id": subscription.plan_id, "staff_emailed_at": _iso(now)},
        )
        plan_id, pk = subscription.plan_id, subscription.pk
        transaction.on_commit(lambda: _email_staff(plan_id, pk))
    return True


def _email_staff(plan_id: str, subscription_id: int) -> None:
    from inventory.alerts import staff_recipients

    recipients = staff_recipients()
    if not recipients:
        return
    try:
        send_mail(
            f"[Coding Plans] No stock to replace a dead key ({plan_id})",
            f"Subscription #{subscription_id} ({plan_id}) has a credential problem: the "
            "provider rejects its key, and there is no available credential of this plan to "
            "replace it. "
            "Upload stock for the plan: the replacement then runs by itself. The admin lists "
            'subscriptions with a credential problem (Subscriptions, filter "credential '
            'problem").',
            settings.DEFAULT_FROM_EMAIL,
            recipients,
        )
    except Exception:  # best effort; the subscription stays listed for staff
        logger.exception("could not e-mail staff about subscription %s", subscription_id)


def replace_flagged(*, plan_id: str | None, now: datetime) -> dict[str, int]:
    """Every flagged live subscription (of one plan, or all), oldest problem first: replaced
    while stock lasts (the restock hook, the hourly review)."""
    counts = {"replaced": 0, "no_stock": 0, "not_needed": 0}
    flagged = Subscription.objects.filter(
        status__in=LIVE_STATUSES, credential_problem_at__isnull=False
    )
    if plan_id is not None:
        flagged = flagged.filter(plan_id=plan_id)
    for pk in flagged.order_by("credential_problem_at", "id").values_list("id", flat=True):
        counts[replace_or_alert(subscription_id=pk, now=now)] += 1
    return counts


# --- service credit (H4) -------------------------------------------------------------------------


def _term_price(subscription: Subscription, at: datetime) -> int:
    """The price of the charged term the problem began in (else the recorded renewal price)."""
    amount = (
        ChargedTerm.objects.filter(
            subscription_id=subscription.pk, period_start__lte=at, period_end__gt=at
        )
        .values_list("amount_micros", flat=True)
        .first()
    )
    return subscription.price_micros if amount is None else amount


def service_credit_amount(
    *, price_micros: int, period_days: int, started: datetime, until: datetime
) -> tuple[int, int]:
    """(days lost, credit): whole days begun since the problem started, at most one period,
    pro rata on the term's price, in whole cents (rounded down)."""
    days = min(max(1, math.ceil((until - started) / timedelta(days=1))), period_days)
    micros = price_micros * days // max(period_days, 1)
    return days, micros - micros % 10_000


def _credit_days_lost(subscription: Subscription, *, until: datetime, actor: str, now) -> int:
    """Inside the caller's transaction, after the credit account and subscription locks: the
    service credit of the current problem, once (`service_credit_for` and the ledger's unique
    reference). Returns the amount credited (0 when already done)."""
    started = subscription.credential_problem_at
    if started is None or subscription.service_credit_for == started:
        return 0
    days, amount = service_credit_amount(
        price_micros=_term_price(subscription, started),
        period_days=subscription.billing_period_days,
        started=started,
        until=until,
    )
    entry = post_service_credit(
        user_id=subscription.user_id,
        amount_micros=amount,
        reference=f"credential_problem:{subscription.pk}:{int(started.timestamp())}",
        actor=actor,
        now=now,
        reason=f"Service credit: {days} day(s) of {subscription.plan_name} with a dead key",
    )
    subscription.service_credit_for = started
    return entry.amount_micros if entry is not None else 0


def grant_service_credit(*, subscription_id: int, now: datetime) -> int:
    """H4 for a problem still open after 24 hours: the days lost so far, credited once per
    problem (a later replacement credits nothing more for it). Returns the amount (0: nothing
    to do)."""
    with transaction.atomic(durable=True):
        subscription = lock_subscription(subscription_id)
        if subscription is None or not subscription.is_live:
            return 0
        started = subscription.credential_problem_at
        if started is None or now - started <= SERVICE_CREDIT_AFTER:
            return 0
        if subscription.service_credit_for == started:
            return 0
        credit = _credit_days_lost(subscription, until=now, actor=SYSTEM_ACTOR, now=now)
        subscription.save(update_fields=["service_credit_for"])
        record_event(
            actor=SYSTEM_ACTOR,
            subject=subscription,
            event_type="subscription.service_credit",
            now=now,
            new={
                "credential_problem_at": _iso(started),
                "service_credit_micros": credit,
            },
        )
        if credit:
            notifications.email_after_commit(
                subscription.user_id,
                f"Service credit for your {subscription.plan_name}",
                "Your Coding Plan's key stopped working more than 24 hours ago and we have not "
                f"replaced it yet. We added {display_usd(credit)} of credits for the days lost.",
            )
    return credit


def review_credential_problems(*, now: datetime) -> dict[str, int]:
    """Hourly (beat): retry the replacement of every flagged subscription (stock may have come
    back), then credit problems open for more than 24 hours (H4)."""
    counts = replace_flagged(plan_id=None, now=now)
    credited = 0
    due = Subscription.objects.filter(
        status__in=LIVE_STATUSES, credential_problem_at__lt=now - SERVICE_CREDIT_AFTER
    ).values_list("id", flat=True)
    for pk in due:
        if grant_service_credit(subscription_id=pk, now=now):
            credited += 1
    counts["service_credits"] = credited
    return counts
