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


def flag_rejected_installed_key(
    sender, *, subscription_id: int, key_fingerprint: str, source: str, **kwargs
) -> None:
    """byok announced a plan's installed key rejected by the provider (the gateway, the BYOK
    key test): flag the subscription's credential problem once (SPEC H3)."""
    from subscriptions.replacement import flag_credential_problem

    flag_credential_problem(
        subscription_id=subscription_id,
        key_fingerprint=key_fingerprint,
        source=source,
        now=timezone.now(),
    )


def replace_on_restock(sender, *, plan_id: str, **kwargs) -> None:
    """Stock came back: replace the dead keys of the plan's flagged subscriptions (SPEC H3),
    from the worker; with the broker down, from here."""
    from subscriptions import replacement
    from subscriptions.tasks import replace_flagged

    try:
        replace_flagged.delay(plan_id)
    except Exception as exc:
        outages.record("task queue", exc)
        replacement.replace_flagged(plan_id=plan_id, now=timezone.now())
