"""Stock alerts for staff (SPEC I7, O3): one e-mail when an assignment takes a plan below its
low-stock threshold, and the daily inventory report. Services in DESIGN.md's sense."""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction

from accounts.models import User
from adminops.audit import record_event
from catalog import all_plans, get_plan
from codingplans import sql
from inventory.models import Credential, LowStockAlert
from inventory.selectors import STATES, counts_by_plan, revocation_queue


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


def check_low_stock(*, plan_id: str, now: datetime) -> bool:
    """Run after a purchase commits. Locks the plan's alert row so concurrent purchases agree
    on a single crossing; returns True when this call sent the e-mail.

    While the plan is at or above its threshold and no alert is armed there is nothing to do,
    and that is settled without the lock: every purchase would otherwise queue on the one alert
    row after its commit. Each purchase checks after its own commit, so the one that takes the
    plan below the threshold always sees it and takes the locked path."""
    plan = get_plan(plan_id)
    if plan is None:
        return False
    threshold = plan.low_stock_threshold
    available, armed = sql.execute(
        f"SELECT (SELECT count(*) FROM (SELECT 1 FROM {sql.table(Credential)} "  # noqa: S608 - table names from the models
        f"WHERE plan_id = %s AND state = '{Credential.State.AVAILABLE}' LIMIT %s) AS stock), "
        f"EXISTS (SELECT 1 FROM {sql.table(LowStockAlert)} "
        "WHERE plan_id = %s AND alerted_at IS NOT NULL)",
        [plan_id, threshold, plan_id],
    )
    if available >= threshold and not armed:  # one lean query: this runs after every purchase
        return False
    with transaction.atomic(durable=True):
        LowStockAlert.objects.get_or_create(plan_id=plan_id)
        alert = LowStockAlert.objects.select_for_update().get(plan_id=plan_id)
        available = _available_up_to(plan_id, threshold)
        if available >= plan.low_stock_threshold:
            if alert.alerted_at is not None:  # restocked: the next crossing alerts again
                alert.alerted_at = None
                alert.save(update_fields=["alerted_at"])
            return False
        if alert.alerted_at is not None:
            return False
        alert.alerted_at = now
        alert.save(update_fields=["alerted_at"])
        record_event(
            actor="system:stock",
            subject=("inventory.plan", plan_id),
            event_type="inventory.low_stock",
            now=now,
            new={"available": available, "threshold": plan.low_stock_threshold},
        )
        recipients = staff_recipients()
        if recipients:
            send_mail(
                subject=f"Low stock: {plan.name} has {available} credential(s) left",
                message=(
                    f"{plan.provider_name} {plan.name} ({plan_id}) is below its low-stock "
                    f"threshold of {plan.low_stock_threshold}: {available} available.\n"
                    "Upload more credentials in the admin (Inventory → Upload)."
                ),
                from_email=settings.DEFAULT_FROM_EMAIL,
                recipient_list=recipients,
            )
    return True


def rearm_low_stock(*, plan_id: str) -> None:
    """After a restock: clear the alert when the plan is back at or above its threshold."""
    plan = get_plan(plan_id)
    if plan is None:
        return
    available = Credential.objects.filter(plan_id=plan_id, state=Credential.State.AVAILABLE).count()
    if available >= plan.low_stock_threshold:
        LowStockAlert.objects.filter(plan_id=plan_id).update(alerted_at=None)


def daily_report_text(*, now: datetime) -> str:
    counts = counts_by_plan()
    lines = [f"Inventory report {now:%Y-%m-%d %H:%M} UTC", ""]
    header = "plan".ljust(28) + "".join(state.rjust(20) for state in STATES)
    lines.append(header)
    for plan in all_plans():
        row = counts[plan.plan_id]
        low = "  LOW" if row["available"] < plan.low_stock_threshold else ""
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
