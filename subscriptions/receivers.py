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


def top_up_outcome(sender, *, attempt_id: int, status: str, **kwargs) -> None:
    """An auto top-up attempt was settled (billing.signals.top_up_settled, after commit): when it
    did not bring the money in, this is the past-due e-mail (SPEC L4, M4, U4), with the reason
    in plain words and where to act — `/credits` after a decline, the confirm page when the bank
    asks the customer to authenticate. An approved top-up sends none: the next sweep renews.
    Sent once per outcome (each outcome is recorded once); only while the subscription still
    waits in grace for that due term."""
    import logging

    from django.conf import settings
    from django.core.mail import send_mail

    from billing.models import TopUpAttempt
    from billing.topup import decline_words
    from codingplans.money import display_usd
    from subscriptions.models import Subscription

    if status not in (TopUpAttempt.Status.DECLINED, TopUpAttempt.Status.REQUIRES_ACTION):
        return
    attempt = TopUpAttempt.objects.filter(pk=attempt_id).first()
    if attempt is None:
        return
    subscription = (
        Subscription.objects.select_related("user")
        .filter(
            pk=attempt.subscription_id,
            status=Subscription.Status.PAST_DUE,
            current_period_end=attempt.due_at,
        )
        .first()
    )
    if subscription is None or not subscription.user.is_active:
        return
    deadline = f"{subscription.grace_deadline:%Y-%m-%d %H:%M} UTC"
    amount = display_usd(attempt.amount_micros)
    if attempt.status == TopUpAttempt.Status.REQUIRES_ACTION:
        action = (
            f"We tried to charge an automatic top-up of {amount} to your saved card, and your "
            f"bank asks you to confirm it. Confirm the payment at {attempt.action_url} before "
            f"{deadline} to keep the plan (or add credits at /credits)."
        )
    else:
        action = (
            f"We tried to charge an automatic top-up of {amount} to your saved card, and it was "
            f"declined: {decline_words(attempt.decline_code)} No money was taken. Add credits or "
            f"another card at /credits before {deadline} to keep the plan."
        )
    body = (
        "Your credits did not cover this renewal. "
        + action
        + f" Otherwise the plan ends and its installed {subscription.provider_name} key is "
        f"removed. Your own {subscription.provider_name} key is never deleted."
    )
    try:
        send_mail(
            f"Payment needed for your {subscription.plan_name}",
            body,
            settings.DEFAULT_FROM_EMAIL,
            [subscription.user.email],
        )
    except Exception:  # e-mail is best effort; the outcome has committed
        logging.getLogger(__name__).exception(
            "could not send the past-due e-mail for subscription %s", subscription.pk
        )


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
