"""Receivers of what lower apps announce (issue 14: the hooks that replace upward imports)."""

from __future__ import annotations

from django.utils import timezone

from codingplans import outages


def queue_availability_notices(sender, *, plan_id: str, **kwargs) -> None:
    """A plan came back in stock: tell each intent holder once (U6), from the worker. With the
    broker (Redis) down the task cannot be queued: tell them from here instead (issue 13 item
    5), which is safe to repeat (each intent is marked notified as its e-mail goes)."""
    from subscriptions import intents
    from subscriptions.tasks import notify_availability

    try:
        notify_availability.delay(plan_id)
    except Exception as exc:
        outages.record("task queue", exc)
        intents.notify_availability(plan_id=plan_id, now=timezone.now())
