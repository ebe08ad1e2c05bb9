"""State changes for users and API tokens."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction

from accounts.errors import EmailTaken, InvalidEmail, TokenNotFound
from accounts.models import ApiToken, User
from adminops.audit import actor_for, record_event
from billing.services import open_credit_account

TOKEN_PREFIX = "cp_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_user(
    *,
    email: str,
    password: str | None,
    now: datetime,
    full_name: str = "",
    is_staff: bool = False,
    is_superuser: bool = False,
    actor: str | None = None,
) -> User:
    """Create a user with an (empty) credit account; e-mails are unique case-insensitively."""
    email = User.objects.normalize_email(email.strip()).lower()
    try:  # the sign-up form validates too; operators' commands and other callers rely on this
        validate_email(email)
    except ValidationError as exc:
        raise InvalidEmail() from exc
    if len(email) > User._meta.get_field("email").max_length:
        raise InvalidEmail()
    with transaction.atomic(durable=True):
        if User.objects.filter(email__iexact=email).exists():
            raise EmailTaken()
        try:
            with transaction.atomic():
                user = User.objects.create_user(
                    email=email,
                    password=password,
                    full_name=full_name,
                    is_staff=is_staff,
                    is_superuser=is_superuser,
                    date_joined=now,
                )
        except IntegrityError as exc:  # a concurrent sign-up with the same address
            raise EmailTaken() from exc
        if password is None:
            user.set_unusable_password()
            user.save(update_fields=["password"])
        open_credit_account(user=user, now=now)
        record_event(
            actor=actor or actor_for(user),
            subject=user,
            event_type="user.created",
            now=now,
            new={"is_staff": is_staff, "is_superuser": is_superuser},
        )
    return user


@dataclass(frozen=True)
class IssuedToken:
    token: ApiToken
    plaintext: str  # shown once to its owner, never stored


def create_api_token(
    *, user: User, now: datetime, name: str = "API token", actor: str | None = None
) -> IssuedToken:
    """A new personal token for `user`; `actor` is who asked (the user, or an operator)."""
    plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic(durable=True):
        token = ApiToken.objects.create(
            user=user,
            name=(name or "API token")[:100],
            prefix=plaintext[:10],
            token_hash=hash_token(plaintext),
            created_at=now,
        )
        record_event(
            actor=actor or actor_for(user),
            subject=token,
            event_type="api_token.created",
            now=now,
            new={"name": token.name, "prefix": token.prefix},
        )
    return IssuedToken(token=token, plaintext=plaintext)


def revoke_api_token(*, user: User, token_id: int, now: datetime) -> ApiToken:
    with transaction.atomic(durable=True):
        token = ApiToken.objects.select_for_update().filter(user=user, pk=token_id).first()
        if token is None:
            raise TokenNotFound()
        if token.revoked_at is None:
            token.revoked_at = now
            token.save(update_fields=["revoked_at"])
            record_event(
                actor=actor_for(user),
                subject=token,
                event_type="api_token.revoked",
                now=now,
                new={"revoked_at": now.isoformat()},
            )
    return token


def authenticate_token(plaintext: str, *, now: datetime) -> User | None:
    """The user a bearer token acts for, or None (revoked, unknown, or the user is gone)."""
    if not plaintext.startswith(TOKEN_PREFIX):
        return None
    token = (
        ApiToken.objects.select_related("user")
        .filter(token_hash=hash_token(plaintext), revoked_at__isnull=True)
        .first()
    )
    if token is None or not token.user.is_active:
        return None
    touch_token(token_id=token.pk, last_used_at=token.last_used_at, now=now)
    return token.user


def touch_token(*, token_id: int, last_used_at: datetime | None, now: datetime) -> None:
    """Note a token's last use, at most once a minute: the account page shows it, and writing
    it on every call would turn each API read into a write."""
    if last_used_at is None or (now - last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=token_id).update(last_used_at=now)


def delete_account(*, user: User, actor: str, now: datetime) -> None:
    """Account deletion (SPEC D1): live subscriptions end now (account_deleted), every BYOK
    entry and availability intent goes, issued credentials are queued for revocation and
    unlinked from the person, personal data is anonymized, tokens and sessions stop working,
    and the e-mail address is free for a new sign-up. Financial records stay, anonymized."""
    from billing.models import CreditAccount
    from billing.services import forfeit_balance
    from byok.models import ByokKey
    from inventory.models import Credential
    from subscriptions.lifecycle import end_subscription
    from subscriptions.models import LIVE_STATUSES, AvailabilityIntent, Subscription

    with transaction.atomic(durable=True):
        # FOR NO KEY UPDATE, not FOR UPDATE: a purchase that already holds this user's credit
        # account goes on to insert rows referencing the user (the subscription, the
        # credential's holder), which take FOR KEY SHARE on the user row. A plain FOR UPDATE
        # would block them while we wait for that same credit account: a deadlock that
        # PostgreSQL breaks by aborting one side. NO KEY UPDATE still serializes deletions.
        user = User.objects.select_for_update(no_key=True).get(pk=user.pk)
        if user.deleted_at is not None:
            return
        # Lock order: credit account → subscriptions → credentials → BYOK entries. A positive
        # balance is forfeited (SPEC M10): a `forfeited` ledger entry brings it to zero.
        CreditAccount.objects.select_for_update().filter(user=user).first()
        forfeited = forfeit_balance(user_id=user.pk, actor=actor, now=now)
        live = list(
            Subscription.objects.select_for_update()
            .filter(user=user, status__in=LIVE_STATUSES)
            .order_by("id")
        )
        for subscription in live:
            end_subscription(
                subscription=subscription,
                reason=Subscription.Reason.ACCOUNT_DELETED,
                actor=actor,
                now=now,
            )
        Credential.objects.filter(assigned_to=user).update(assigned_to=None)
        ByokKey.objects.filter(user=user).delete()
        AvailabilityIntent.objects.filter(user=user).delete()
        ApiToken.objects.filter(user=user, revoked_at__isnull=True).update(revoked_at=now)
        old_email_domain = user.email.rsplit("@", 1)[-1]
        user.email = f"deleted-{user.pk}-{secrets.token_hex(6)}@deleted.invalid"
        user.full_name = ""
        user.is_active = False
        user.is_staff = False
        user.is_superuser = False
        user.deleted_at = now
        # A new password hash changes the session auth hash: every session stops at once.
        user.set_unusable_password()
        user.save()
        user.groups.clear()
        user.user_permissions.clear()
        record_event(
            actor=actor,
            subject=user,
            event_type="account.deleted",
            now=now,
            old={"email_domain": old_email_domain},
            new={
                "subscriptions_ended": [s.pk for s in live],
                "forfeited_micros": -forfeited.amount_micros if forfeited else 0,
            },
        )
