"""What inventory announces upward (issue 14: inventory never imports subscriptions).

`plan_restocked` is sent after the upload's transaction commits, once per plan whose stock went
from none to some. Receivers run in the web or worker process that stored the upload and must be
quick and safe to repeat (queue a task, re-arm an alert); a receiver that fails is logged and
does not stop the others (`send_robust`).
"""

from __future__ import annotations

import logging

from django.dispatch import Signal

logger = logging.getLogger(__name__)

# Sent with `plan_id` (str).
plan_restocked = Signal()


def announce_restock(plan_id: str) -> None:
    for receiver, outcome in plan_restocked.send_robust(sender="inventory", plan_id=plan_id):
        if isinstance(outcome, Exception):
            logger.error(
                "restock receiver %s failed for plan %s: %s",
                getattr(receiver, "__qualname__", receiver),
                plan_id,
                type(outcome).__name__,
            )
