"""What the admin home shows operators before anything else (SPEC I7, R1)."""

from __future__ import annotations

from django import template

from catalog import get_plan
from inventory import selectors

register = template.Library()


@register.simple_tag(takes_context=True)
def inventory_overview(context) -> dict | None:
    request = context.get("request")
    user = getattr(request, "user", None)
    if user is None or not user.is_staff:
        return None
    can_view = user.has_perm("inventory.view_credential")
    can_upload = user.has_perm("inventory.upload_credentials")
    can_revoke = user.has_perm("inventory.record_revocation")
    if not (can_view or can_upload or can_revoke):
        return None
    low_stock = []
    for plan_id, available, threshold in selectors.low_stock_plans():
        plan = get_plan(plan_id)
        low_stock.append(
            {
                "label": f"{plan.name} ({plan_id})" if plan else plan_id,
                "available": available,
                "threshold": threshold,
            }
        )
    return {
        "low_stock": low_stock,
        "queue_size": selectors.revocation_queue().count() if can_revoke else None,
        "can_upload": can_upload,
        "can_revoke": can_revoke,
    }


@register.simple_tag(takes_context=True)
def sweep_health(context):
    """SPEC O2: the last sweep run, its counts and errors, the subscriptions due now, and the
    warnings (no sweep finished in 2 hours, or the last one had errors). None for staff who may
    not see sweep runs."""
    from django.utils import timezone

    from adminops.health import sweep_health as health

    request = context.get("request")
    user = getattr(request, "user", None)
    if user is None or not user.is_staff or not user.has_perm("subscriptions.view_sweeprun"):
        return None
    return health(now=timezone.now())


@register.simple_tag(takes_context=True)
def redis_outages(context) -> list[dict] | None:
    """Issue 13 item 5: the times this web process carried on without Redis (rate limits not
    enforced, the quota cache or the task queue not used), per kind, for any staff member."""
    from codingplans import outages

    request = context.get("request")
    user = getattr(request, "user", None)
    if user is None or not user.is_staff:
        return None
    rows = outages.snapshot()
    return [{"kind": kind, "count": n, "last": last} for kind, n, last in rows] or None


@register.simple_tag(takes_context=True)
def stock_health(context):
    """SPEC H1, H3: the last stock health run, quarantined stock and the subscriptions whose key
    died, for staff who may see credentials."""
    from django.utils import timezone

    from adminops.health import stock_health as health

    request = context.get("request")
    user = getattr(request, "user", None)
    if user is None or not user.is_staff or not user.has_perm("inventory.view_credential"):
        return None
    return health(now=timezone.now())
