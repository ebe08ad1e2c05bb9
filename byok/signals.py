"""What byok announces upward (issue 14: lower apps never import subscriptions).

`installed_key_rejected` (SPEC H3): the provider answered 401/403 to a key that came from a
plan's installed entry — in the gateway (which sits above byok and announces through here) or
in the BYOK key test. Sent with `subscription_id` (int), `key_fingerprint` (the keyed
fingerprint of the rejected key, so a late rejection of a key already replaced is recognised
and ignored; never the key itself) and `source` (`gateway` | `byok_test` | …). Sent after the
caller's transaction commits (at once when there is none); receivers must be quick and safe to
repeat, and one that fails is logged without stopping the others (`send_robust`).
"""

from __future__ import annotations

import logging

from django.db import transaction
from django.dispatch import Signal

from codingplans import crypto

logger = logging.getLogger(__name__)

installed_key_rejected = Signal()


def announce_installed_key_rejected(*, subscription_id: int, api_key: str, source: str) -> None:
    fingerprint = crypto.fingerprint(api_key)

    def send() -> None:
        for receiver, outcome in installed_key_rejected.send_robust(
            sender="byok",
            subscription_id=subscription_id,
            key_fingerprint=fingerprint,
            source=source,
        ):
            if isinstance(outcome, Exception):
                logger.error(
                    "key-rejected receiver %s failed for subscription %s: %s",
                    getattr(receiver, "__qualname__", receiver),
                    subscription_id,
                    type(outcome).__name__,
                )

    transaction.on_commit(send)
