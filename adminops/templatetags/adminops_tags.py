"""What the admin home shows operators before anything else (SPEC I7, R1)."""

from __future__ import annotations

from django import template

from inventory import selectors
from subscriptions.catalog import get_plan

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


SWEEP_STALE_AFTER_HOURS = 2


@register.simple_tag(takes_context=True)
def sweep_health(context) -> dict | None:
    """SPEC O2: warn when no billing sweep finished in the last 2 hours, or the last one that
    finished had errors. None when all is well (or the user may not see sweep runs)."""
    from datetime import timedelta

    from django.utils import timezone

    from subscriptions.models import SweepRun

    request = context.get("request")
    user = getattr(request, "user", None)
    if user is None or not user.is_staff or not user.has_perm("subscriptions.view_sweeprun"):
        return None
    last = (
        SweepRun.objects.filter(finished_at__isnull=False)
        .order_by("-finished_at", "-id")
        .only("id", "finished_at", "counts", "errors")
        .first()
    )
    warnings = []
    cutoff = timezone.now() - timedelta(hours=SWEEP_STALE_AFTER_HOURS)
    if last is None or last.finished_at < cutoff:
        warnings.append(
            f"No billing sweep has finished in the last {SWEEP_STALE_AFTER_HOURS} hours"
            + (f" (last: {last.finished_at:%Y-%m-%d %H:%M} UTC)." if last else ".")
            + " Check that Celery beat and the worker are running."
        )
    if last is not None and (last.error_count or last.errors):
        count = last.error_count or len(last.errors)
        warnings.append(f"The last billing sweep (#{last.pk}) had {count} error(s).")
    return {"warnings": warnings, "last": last} if warnings else None
