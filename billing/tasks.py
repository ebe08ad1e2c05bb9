"""Celery tasks: thin callers of services. Arguments are ids only."""

from datetime import datetime

from celery import shared_task

from billing import services


@shared_task(name="billing.tasks.charge_top_up")
def charge_top_up(attempt_id: int, now: str) -> None:
    """Charge a recorded auto top-up attempt after the sweep's commit and record its outcome
    (SPEC L4, S5, M4). Safe to repeat: only a pending attempt is charged and settled once;
    `now` is the sweep's clock (ISO 8601), so the ledger entry carries the sweep's time."""
    services.execute_top_up(attempt_id=attempt_id, now=datetime.fromisoformat(now))
