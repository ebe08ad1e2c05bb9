"""The e-mails of the account itself (SPEC A1, A2): the verification link, the password-reset
link, the e-mail change link to the new address and the notice to the old one.

Each is one multipart message (text + HTML) from `templates/accounts/email/`. Links are built
on `base_url`, the site's address as the page that asked for them was reached (a host Django's
ALLOWED_HOSTS accepted), or CODING_PLANS_SITE_URL. A link is made where the message is sent and
never passed through the task queue: the password-reset task gets the user's id only.
"""

from __future__ import annotations

from django.contrib.auth.tokens import default_token_generator
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from accounts import verification
from accounts.models import User
from codingplans.mail import send_templated, site_url


def _link(base_url: str | None, path: str) -> str:
    return (base_url or site_url("")).rstrip("/") + path


def _hours() -> int:
    from django.conf import settings

    return max(1, settings.PASSWORD_RESET_TIMEOUT // 3600)


def send_verification(user: User, *, base_url: str | None = None) -> None:
    token = verification.verification_token(user)
    send_templated(
        to=user.email,
        subject="Confirm your e-mail address for Coding Plans",
        template="accounts/email/verify",
        context={"link": _link(base_url, f"/account/verify/{token}/"), "hours": _hours()},
    )


def send_password_reset(user: User, *, base_url: str | None = None) -> None:
    uid = urlsafe_base64_encode(force_bytes(user.pk))
    token = default_token_generator.make_token(user)
    send_templated(
        to=user.email,
        subject="Reset your Coding Plans password",
        template="accounts/email/password_reset",
        context={"link": _link(base_url, f"/accounts/reset/{uid}/{token}/"), "hours": _hours()},
    )


def send_email_change_link(user: User, new_email: str, *, base_url: str | None = None) -> None:
    token = verification.email_change_token(user, new_email)
    send_templated(
        to=new_email,
        subject="Confirm your new e-mail address for Coding Plans",
        template="accounts/email/change_email",
        context={
            "link": _link(base_url, f"/account/email/confirm/{token}/"),
            "hours": _hours(),
            "new_email": new_email,
        },
    )


def send_email_changed_notice(*, old_email: str, new_email: str) -> None:
    send_templated(
        to=old_email,
        subject="Your Coding Plans e-mail address was changed",
        template="accounts/email/email_changed",
        context={"new_email": new_email},
    )
