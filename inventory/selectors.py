"""Reads for operators: counts per plan and state, the revocation queue."""

from __future__ import annotations

from django.db.models import Count

from catalog import all_plans
from inventory.models import Credential

STATES = [state.value for state in Credential.State]


def counts_by_plan() -> dict[str, dict[str, int]]:
    """Every catalog plan and every state, zeros included (SPEC 11.2 inventory_report)."""
    counts = {plan.plan_id: dict.fromkeys(STATES, 0) for plan in all_plans()}
    rows = Credential.objects.values("plan_id", "state").annotate(n=Count("id")).order_by()
    for row in rows:
        counts.setdefault(row["plan_id"], dict.fromkeys(STATES, 0))[row["state"]] = row["n"]
    return counts


def is_low_stock(available: int, threshold: int) -> bool:
    """The one meaning of "low stock" (SPEC I7, O3): at or below the plan's threshold. The
    admin's warning, the staff e-mail and the daily report all ask this (issue 13 item 6)."""
    return available <= threshold


def low_stock_plans() -> list[tuple[str, int, int]]:
    """(plan id, available, threshold) for plans at or below their low-stock threshold."""
    counts = counts_by_plan()
    return [
        (plan.plan_id, counts[plan.plan_id]["available"], plan.low_stock_threshold)
        for plan in all_plans()
        if is_low_stock(counts[plan.plan_id]["available"], plan.low_stock_threshold)
    ]


# What the queue shows (the admin page, the command, the daily report); never the key.
QUEUE_FIELDS = (
    "id",
    "plan_id",
    "state",
    "upstream_plan_id",
    "revocation_requested_at",
    "revocation_attempts",
    "last_attempt_at",
    "failure_note",
)


def revocation_queue(limit: int | None = None):
    """Oldest first (R1), with the queue's columns only."""
    rows = (
        Credential.objects.filter(state__in=Credential.REVOCABLE_STATES)
        .only(*QUEUE_FIELDS)
        .order_by("revocation_requested_at", "id")
    )
    return rows[:limit] if limit else rows
