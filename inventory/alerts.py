"""Stock alerts for staff (SPEC I7, O3): one e-mail when an assignment takes a plan to its
low-stock threshold or below (`inventory.selectors.is_low_stock`, the admin's meaning too), and
the daily inventory report. Services in DESIGN.md's sense."""

from __future__ import annotations

from datetime import datetime
from functools import partial

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone

from accounts.models import User
from adminops.audit import record_event
from catalog import all_plans, get_plan
from codingplans import sql
from inventory.models import Credential, LowStockAlert
from inventory.selectors import STATES, counts_by_plan, is_low_stock, revocation_queue


def staff_recipients() -> list[str]:
    return list(
        User.objects.filter(is_staff=True, is_active=True, deleted_at__isnull=True)
        .order_by("id")
        .values_list("email", flat=True)
    )


def _available_up_to(plan_id: str, limit: int) -> int:
    """Available credentials of the plan, counted up to `limit`: exact below it, `limit` at or
    above it -- all the threshold check needs, at the same cost with 10 or 100,000 in stock."""
    return (
        Credential.objects.filter(plan_id=plan_id, state=Credential.State.AVAILABLE)
        .values("id")[:limit]
        .count()
    )


def stock_check_needed(*, seen: int, threshold: int, concurrency: int) -> bool:
    """Whether a claim must be followed by `check_low_stock` after its commit, from what the
    claiming statement saw: `seen` available rows (its own included, counted up to
    threshold + concurrency + 2) while at most `concurrency` transactions (the server's
    connection limit) ran at once.

    Why this never misses a crossing: take the claim whose statement snapshot was the last
    taken. Every other claim had either committed before it (and is counted out of `seen`) or
    was still open at that moment, holding one of at most `concurrency - 1` other connections.
    So the stock after everyone commits is at least seen - 1 - (concurrency - 1); if that could
    be at or below the threshold, this claim checks. Far from the threshold (the common case)
    the purchase runs no extra statement (issue 20)."""
    return seen - concurrency <= threshold


def check_after_commit(*, plan_id: str, stock_check: bool, now: datetime) -> None:
    """The line an assignment (a purchase, a replacement) adds inside its transaction: when its
    claim may have taken the plan to its threshold (`ClaimedCredential.stock_check`), run
    `check_low_stock` once the transaction commits (robust: a failing check never fails the
    assignment, which has committed)."""
    if stock_check:
        transaction.on_commit(partial(check_low_stock, plan_id=plan_id, now=now), robust=True)


def check_low_stock(*, plan_id: str, now: datetime) -> bool:
    """Run after a purchase commits. Locks the plan's alert row so concurrent purchases agree
    on a single crossing; returns True when this call armed the alert (the e-mail then goes out
    after this transaction commits, `send_low_stock_email`, never under the lock).

    Low stock is `is_low_stock` (at or below the threshold), as the admin warns. Counting up
    to threshold + 1 tells "low" from "not low" exactly. While the plan is not low and no
    alert is armed there is nothing to do, and that is settled without the lock: every purchase
    would otherwise queue on the one alert row after its commit. Each purchase checks after its
    own commit, so the one that takes the plan to its threshold always sees it and takes the
    locked path."""
    plan = get_plan(plan_id)
    if plan is None:
        return False
    threshold = plan.low_stock_threshold
    stock = sql.execute(
        f"SELECT (SELECT count(*) FROM (SELECT 1 FROM {sql.table(Credential)} "  # noqa: S608 - table names from the models
        f"WHERE plan_id = %s AND state = '{Credential.State.AVAILABLE}' LIMIT %s) AS sq) "
        "AS available, "
        f"EXISTS (SELECT 1 FROM {sql.table(LowStockAlert)} "
        "WHERE plan_id = %s AND alerted_at IS NOT NULL) AS armed",
        [plan_id, threshold + 1, plan_id],
    )
    if (
        not is_low_stock(stock.available, threshold) and not stock.armed
    ):  # one lean query per purchase
        return False
    with transaction.atomic(durable=True):
        LowStockAlert.objects.get_or_create(plan_id=plan_id)
        alert = LowStockAlert.objects.select_for_update().get(plan_id=plan_id)
        available = _available_up_to(plan_id, threshold + 1)
        if not is_low_stock(available, threshold):
            if alert.alerted_at is not None:  # restocked: the next crossing alerts again
                alert.alerted_at = None
                alert.emailed_at = None
                alert.save(update_fields=["alerted_at", "emailed_at"])
            return False
        if alert.alerted_at is not None:
            return False
        alert.alerted_at = now
        alert.emailed_at = None
        alert.save(update_fields=["alerted_at", "emailed_at"])
        record_event(
            actor="system:stock",
            subject=("inventory.plan", plan_id),
            event_type="inventory.low_stock",
            now=now,
            new={"available": available, "threshold": threshold},
        )
        # Outside this transaction and its lock: a slow mail server holds nothing, and a
        # rolled-back check sends nothing. robust: a broker that is down is logged.
        transaction.on_commit(partial(_queue_low_stock_email, plan_id, now), robust=True)
    return True


def _queue_low_stock_email(plan_id: str, now: datetime) -> None:
    from inventory.tasks import send_low_stock_email

    send_low_stock_email.delay(plan_id, now.isoformat())


def send_low_stock_email(*, plan_id: str, alerted_at: datetime) -> bool:
    """The staff e-mail for one armed low-stock alert (O3), sent with no transaction open.
    Idempotent: it is claimed first (`emailed_at`), so a repeated task sends nothing; a send
    that fails gives the claim back so a retry can send it. Returns True when it was sent."""
    plan = get_plan(plan_id)
    if plan is None:
        return False
    claimed = LowStockAlert.objects.filter(
        plan_id=plan_id, alerted_at=alerted_at, emailed_at__isnull=True
    ).update(emailed_at=timezone.now())
    if not claimed:
        return False  # already sent, or the plan was restocked (re-armed) meanwhile
    recipients = staff_recipients()
    if not recipients:
        return False
    available = _available_up_to(plan_id, plan.low_stock_threshold + 1)
    try:
        send_mail(
            subject=f"Low stock: {plan.name} has {available} credential(s) left",
            message=(
                f"{plan.provider_name} {plan.name} ({plan_id}) is at or below its low-stock "
                f"threshold of {plan.low_stock_threshold}: {available} available.\n"
                "Upload more credentials in the admin (Inventory → Upload)."
            ),
            from_email=settings.DEFAULT_FROM_EMAIL,
            recipient_list=recipients,
        )
    except Exception:
        LowStockAlert.objects.filter(plan_id=plan_id, alerted_at=alerted_at).update(emailed_at=None)
        raise
    return True


def rearm_low_stock(*, plan_id: str) -> None:
    """After a restock: clear the alert when the plan is no longer low (`is_low_stock`)."""
    plan = get_plan(plan_id)
    if plan is None:
        return
    threshold = plan.low_stock_threshold
    if not is_low_stock(_available_up_to(plan_id, threshold + 1), threshold):
        LowStockAlert.objects.filter(plan_id=plan_id).update(alerted_at=None, emailed_at=None)


def daily_report_text(*, now: datetime) -> str:
    counts = counts_by_plan()
    lines = [f"Inventory report {now:%Y-%m-%d %H:%M} UTC", ""]
    header = "plan".ljust(28) + "".join(state.rjust(20) for state in STATES)
    lines.append(header)
    for plan in all_plans():
        row = counts[plan.plan_id]
        low = "  LOW" if is_low_stock(row["available"], plan.low_stock_threshold) else ""
        lines.append(plan.plan_id.ljust(28) + "".join(str(row[s]).rjust(20) for s in STATES) + low)
    queue = revocation_queue()
    oldest = queue.first()
    lines += [
        "",
        f"Revocation backlog: {queue.count()} credential(s)"
        + (
            f", oldest requested {oldest.revocation_requested_at:%Y-%m-%d %H:%M} UTC"
            if oldest
            else ""
        ),
    ]
    return "\n".join(lines)


def send_daily_report(*, now: datetime) -> int:
    """The 12:00 UTC report (O3): counts per plan and state, and the revocation backlog."""
    recipients = staff_recipients()
    if not recipients:
        return 0
    send_mail(
        subject=f"Coding Plans inventory report {now:%Y-%m-%d}",
        message=daily_report_text(now=now),
        from_email=settings.DEFAULT_FROM_EMAIL,
        recipient_list=recipients,
    )
    return len(recipients)
