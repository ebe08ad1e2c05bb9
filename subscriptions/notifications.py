"""The customer's e-mails about their subscription's lifecycle (SPEC L3–L6): each is queued by
the transaction that made the change and sent after it commits, best effort.

(The restock e-mail of an availability intent is sent by subscriptions/intents.py, which marks
each intent notified as its e-mail goes.)
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction

from subscriptions.models import Subscription

logger = logging.getLogger(__name__)


def email_after_commit(user_id: int, subject: str, body: str) -> None:
    """Send `user_id` an e-mail once the caller's transaction commits (never if it rolls back).
    A failure to send is logged: the state change has committed and stands."""

    def send() -> None:
        from accounts.models import User

        user = User.objects.filter(pk=user_id, is_active=True).first()
        if user is None:
            return
        try:
            send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [user.email])
        except Exception:  # e-mail is best effort; the state change has committed
            logger.exception("could not send lifecycle e-mail to user %s", user_id)

    transaction.on_commit(send)


def payment_needed(
    subscription: Subscription, *, top_up_attempted: bool, blocker: str = ""
) -> None:
    """The sweep put a plan in grace until its grace deadline (L4), with no top-up under way;
    `blocker` says why none was made ("no_card": M4 asks for a card or credits)."""
    email_after_commit(
        subscription.user_id,
        f"Payment needed for your {subscription.plan_name}",
        "Your credits did not cover this renewal. "
        + (
            "We attempted an automatic top-up. "
            if top_up_attempted
            else "Automatic top-up could not charge you: there is no saved card. Add a card "
            "(tick “Save this card for automatic top-up” when you add credits) or add credits "
            "at /credits. "
            if blocker == "no_card"
            else "Automatic top-up is not available at the moment. "
        )
        + "Add credits "
        f"before {subscription.grace_deadline:%Y-%m-%d %H:%M} UTC to keep the plan; otherwise it "
        f"ends and its installed {subscription.provider_name} key is removed. Your own "
        f"{subscription.provider_name} key is never deleted.",
    )
