"""Receivers of what lower apps announce (issue 14: the hooks that replace upward imports)."""

from __future__ import annotations


def queue_availability_notices(sender, *, plan_id: str, **kwargs) -> None:
    """A plan came back in stock: tell each intent holder once (U6), from the worker."""
    from subscriptions.tasks import notify_availability

    notify_availability.delay(plan_id)
