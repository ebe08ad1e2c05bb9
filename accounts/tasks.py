"""Celery tasks of the account (issue 19): thin callers, ids only."""

import smtplib

from celery import shared_task

from accounts import emails
from accounts.models import User


@shared_task(
    name="accounts.tasks.send_password_reset",
    # A mail server that is briefly down must not lose the link (SPEC A1); a retry makes a
    # fresh link, and the link in an earlier message stays valid too until one is used.
    autoretry_for=(smtplib.SMTPException, OSError),
    retry_backoff=30,
    retry_backoff_max=600,
    max_retries=5,
)
def send_password_reset(user_id: int, base_url: str) -> bool:
    """The reset link for one account (SPEC A1). Queued by the reset page, so known and unknown
    addresses take the same time to answer; the link is made here, never passed through the
    queue (the task's arguments are an id and the site's address)."""
    user = User.objects.filter(pk=user_id, is_active=True, deleted_at__isnull=True).first()
    if user is None or not user.has_usable_password():
        return False
    emails.send_password_reset(user, base_url=base_url)
    return True
