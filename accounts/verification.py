"""Links that prove an address (SPEC A1, A2): the sign-up verification link and the e-mail
change link, and the one check that buying and paying make (`require_verified`).

Both links are signed (Django's `signing`, salted per purpose, with the site's SECRET_KEY) and
expire after PASSWORD_RESET_TIMEOUT, like the password-reset link. Nothing is stored: each link
carries a fingerprint of the account state it was made for, so it stops working once that state
moves on. A verification link names the address it verifies (a link sent to an address the
customer has since changed verifies nothing); an e-mail change link also names the password
hash, so changing the password (say, after noticing someone else asked for the change) kills
every pending change link, and the change itself makes the link one-time (the current address
in its fingerprint is no longer the account's).

Low in the layers (beside the models): the purchase and the card payments ask
`require_verified`, and the pages that send the links import the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.core import signing
from django.utils.crypto import constant_time_compare, salted_hmac

from accounts.errors import EmailUnverified
from accounts.models import User

VERIFY_SALT = "accounts.verify-email"
CHANGE_SALT = "accounts.change-email"


def require_verified(user) -> None:
    """Raise `email_unverified` (403) unless the account's address is verified (SPEC A2)."""
    if getattr(user, "email_verified_at", None) is None:
        raise EmailUnverified()


def _fingerprint(purpose: str, *parts: object) -> str:
    value = "\x1f".join(str(part) for part in parts)
    return salted_hmac(purpose, value, algorithm="sha256").hexdigest()[:32]


def verification_token(user: User) -> str:
    return signing.dumps(
        {"u": user.pk, "f": _fingerprint(VERIFY_SALT, user.pk, user.email)}, salt=VERIFY_SALT
    )


def user_for_verification(token: str) -> User | None:
    """The account a verification link was made for, while the link is valid and the account
    still has the address it was sent to; else None."""
    data = _load(token, VERIFY_SALT)
    if data is None:
        return None
    user = _live_user(data.get("u"))
    if user is None or not constant_time_compare(
        str(data.get("f", "")), _fingerprint(VERIFY_SALT, user.pk, user.email)
    ):
        return None
    return user


def email_change_token(user: User, new_email: str) -> str:
    return signing.dumps(
        {
            "u": user.pk,
            "e": new_email,
            "f": _fingerprint(CHANGE_SALT, user.pk, user.email, user.password, new_email),
        },
        salt=CHANGE_SALT,
    )


@dataclass(frozen=True)
class EmailChange:
    user: User
    new_email: str


def email_change_for(token: str) -> EmailChange | None:
    """The change an e-mail change link asks for, while valid and not yet made; else None."""
    data = _load(token, CHANGE_SALT)
    if data is None or not isinstance(data.get("e"), str):
        return None
    user = _live_user(data.get("u"))
    if user is None:
        return None
    expected = _fingerprint(CHANGE_SALT, user.pk, user.email, user.password, data["e"])
    if not constant_time_compare(str(data.get("f", "")), expected):
        return None
    return EmailChange(user=user, new_email=data["e"])


def _load(token: str, salt: str) -> dict | None:
    if not isinstance(token, str) or len(token) > 1000:
        return None
    try:
        data = signing.loads(token, salt=salt, max_age=settings.PASSWORD_RESET_TIMEOUT)
    except signing.BadSignature:  # also SignatureExpired
        return None
    return data if isinstance(data, dict) else None


def _live_user(user_id: object) -> User | None:
    if not isinstance(user_id, int):
        return None
    return User.objects.filter(pk=user_id, is_active=True, deleted_at__isnull=True).first()
