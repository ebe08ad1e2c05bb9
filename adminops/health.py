"""Billing sweep health for the admin home (SPEC O2, L1).

`sweep_health(now=...)` takes the clock as an argument, like the services, so the "no sweep in
2 hours" warning can be tested at any instant; the admin home passes `timezone.now()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from subscriptions.models import Subscription, SweepRun
from subscriptions.selectors import due_subscriptions

STALE_AFTER = timedelta(hours=2)
# A run not finished after this long was killed (deploy, OOM); the sweep's own budget is 10 min.
RUNNING_AT_MOST = timedelta(minutes=30)
MAX_ERRORS_SHOWN = 20


@dataclass
class SweepHealth:
    now: datetime
    last: SweepRun | None  # the last run that finished
    running: SweepRun | None  # a run started after it and not (yet) finished
    due_now: int  # live subscriptions whose period has ended
    in_grace: int  # of which past_due, waiting for funds until their grace deadline
    counts: list[tuple[str, int]] = field(default_factory=list)
    errors: list[dict[str, object]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def running_stalled(self) -> bool:
        return self.running is not None and self.now - self.running.started_at > RUNNING_AT_MOST


def sweep_health(*, now: datetime) -> SweepHealth:
    last = (
        SweepRun.objects.filter(finished_at__isnull=False).order_by("-finished_at", "-id").first()
    )
    newer = SweepRun.objects.filter(finished_at__isnull=True)
    if last is not None:
        newer = newer.filter(started_at__gt=last.started_at)
    running = newer.order_by("-started_at", "-id").first()
    due = due_subscriptions(now)  # what the next sweep will look at (L1)
    health = SweepHealth(
        now=now,
        last=last,
        running=running,
        due_now=due.count(),
        in_grace=due.filter(status=Subscription.Status.PAST_DUE).count(),
    )
    if last is not None:
        counts = last.counts or {}
        health.counts = [(key, int(counts.get(key, 0) or 0)) for key in SweepRun.COUNT_KEYS]
        health.errors = [
            {"subscription_id": item.get("subscription_id"), "error": str(item.get("error", ""))}
            for item in (last.errors or [])[:MAX_ERRORS_SHOWN]
            if isinstance(item, dict)
        ]
    if last is None or last.finished_at < now - STALE_AFTER:
        hours = int(STALE_AFTER.total_seconds() // 3600)
        health.warnings.append(
            f"No billing sweep has finished in the last {hours} hours"
            + (f" (last: {last.finished_at:%Y-%m-%d %H:%M} UTC)." if last else ".")
            + " Check that Celery beat and the worker are running."
        )
    error_count = (last.error_count or len(last.errors or [])) if last is not None else 0
    if error_count:
        health.warnings.append(f"The last billing sweep (#{last.pk}) had {error_count} error(s).")
    return health


# --- Stock health (SPEC H1, H3) -----------------------------------------------------------------

HEALTH_STALE_AFTER = timedelta(hours=26)  # a daily run, with slack


@dataclass
class StockHealth:
    now: datetime
    last: object | None  # the last StockHealthRun that finished
    running: object | None  # an unfinished run (running, or cut off: the next one continues it)
    quarantined: int  # credentials quarantined now
    credential_problems: int  # live subscriptions whose key died, waiting for a replacement
    warnings: list[str] = field(default_factory=list)


def stock_health(*, now: datetime) -> StockHealth:
    from inventory.models import Credential, StockHealthRun

    last = (
        StockHealthRun.objects.filter(finished_at__isnull=False)
        .order_by("-finished_at", "-id")
        .first()
    )
    running = (
        StockHealthRun.objects.filter(finished_at__isnull=True).order_by("-started_at").first()
    )
    health = StockHealth(
        now=now,
        last=last,
        running=running,
        quarantined=Credential.objects.filter(state=Credential.State.QUARANTINED).count(),
        credential_problems=Subscription.objects.filter(
            status__in=("active", "past_due"), credential_problem_at__isnull=False
        ).count(),
    )
    if last is None or last.finished_at < now - HEALTH_STALE_AFTER:
        health.warnings.append(
            "No stock health run has finished in the last day"
            + (f" (last: {last.finished_at:%Y-%m-%d %H:%M} UTC)." if last else ".")
            + " Check Celery beat, or run check_stock_health."
        )
    if health.credential_problems:
        health.warnings.append(
            f"{health.credential_problems} subscription(s) have a plan key the provider rejects "
            "and wait for a replacement."
        )
    return health
