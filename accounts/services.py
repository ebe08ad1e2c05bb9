"""An account's lifecycle: sign-up (which opens its credit account) and deletion (which ends
everything the account holds, SPEC D1). It sits above the apps it orchestrates; personal API
tokens, which every layer authenticates, live below in `accounts.tokens` (issue 14)."""

from __future__ import annotations

import secrets
from datetime import datetime
from enum import StrEnum

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction

from accounts.errors import EmailTaken, EmailUnchanged, InvalidEmail
from accounts.models import User
from accounts.tokens import revoke_all_tokens
from adminops.audit import actor_for, record_event
from billing.services import forfeit_balance, lock_credit_account, open_credit_account
from byok.services import delete_account_keys
from inventory.services import forget_holder
from subscriptions.actions import end_account_subscriptions


def create_user(
    *,
    email: str,
    password: str | None,
    now: datetime,
    full_name: str = "",
    is_staff: bool = False,
    is_superuser: bool = False,
    actor: str | None = None,
    verified: bool = True,
) -> User:
    """Create a user with an (empty) credit account; e-mails are unique case-insensitively.
    Accounts are verified (SPEC A2: operators' `create_user`, seeds, tests) unless the caller
    passes `verified=False`, as sign-up does: its address is verified by the link it is sent."""
    email = _normalized_email(email)
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
                    email_verified_at=now if verified else None,
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
            new={"is_staff": is_staff, "is_superuser": is_superuser, "verified": verified},
        )
    return user


def _normalized_email(email: str) -> str:
    email = User.objects.normalize_email(email.strip()).lower()
    try:  # the forms validate too; operators' commands and other callers rely on this
        validate_email(email)
    except ValidationError as exc:
        raise InvalidEmail() from exc
    if len(email) > User._meta.get_field("email").max_length:
        raise InvalidEmail()
    return email


# --- the address and the password (SPEC A1, A2) ----------------------------------------------


def verify_email(*, user: User, now: datetime) -> bool:
    """Mark the account's address verified (SPEC A2): the customer followed the link sent to
    it. Idempotent: True only when this call verified it."""
    with transaction.atomic(durable=True):
        user = User.objects.select_for_update(no_key=True).get(pk=user.pk)
        if user.email_verified_at is not None:
            return False
        user.email_verified_at = now
        user.save(update_fields=["email_verified_at"])
        record_event(
            actor=actor_for(user),
            subject=user,
            event_type="user.email_verified",
            now=now,
            new={"email_domain": user.email.rsplit("@", 1)[-1]},
        )
    return True


def new_email_for(*, user: User, email: str) -> str:
    """The normalised new address a customer asks to use (SPEC A1), or a refusal: not an
    address, their own already, or another account's. Changes nothing: the change is made by
    `change_email` once the link sent to the new address is followed."""
    email = _normalized_email(email)
    if email == user.email.lower():
        raise EmailUnchanged()
    if User.objects.filter(email__iexact=email).exclude(pk=user.pk).exists():
        raise EmailTaken()
    return email


def change_email(*, user: User, new_email: str, now: datetime) -> str:
    """Make the confirmed e-mail change (SPEC A1): the new address, verified by the link that
    was followed. Returns the old address (it gets a notice). Refused if another account took
    the address meanwhile."""
    new_email = _normalized_email(new_email)
    with transaction.atomic(durable=True):
        user = User.objects.select_for_update(no_key=True).get(pk=user.pk)
        old_email = user.email
        if User.objects.filter(email__iexact=new_email).exclude(pk=user.pk).exists():
            raise EmailTaken()
        user.email = new_email
        user.email_verified_at = now
        try:
            with transaction.atomic():
                user.save(update_fields=["email", "email_verified_at"])
        except IntegrityError as exc:  # a concurrent sign-up with the same address
            raise EmailTaken() from exc
        record_event(
            actor=actor_for(user),
            subject=user,
            event_type="user.email_changed",
            now=now,
            old={"email_domain": old_email.rsplit("@", 1)[-1]},
            new={"email_domain": new_email.rsplit("@", 1)[-1]},
        )
    return old_email


class PasswordChannel(StrEnum):
    CHANGE = "change"  # signed in, on /account/, with the current password
    RESET = "reset"  # through the link e-mailed by /accounts/password-reset/


def set_password(*, user: User, password: str, via: PasswordChannel, now: datetime) -> User:
    """A new password (SPEC A1), already validated by Django's password forms. The hash
    changes, so other sessions end and every reset or e-mail change link made before stops
    working. A reset also proves the address, so it verifies an unverified one."""
    with transaction.atomic(durable=True):
        locked = User.objects.select_for_update(no_key=True).get(pk=user.pk)
        locked.set_password(password)
        fields = ["password"]
        verified = via == PasswordChannel.RESET and locked.email_verified_at is None
        if verified:
            locked.email_verified_at = now
            fields.append("email_verified_at")
        locked.save(update_fields=fields)
        record_event(
            actor=actor_for(locked),
            subject=locked,
            event_type="user.password_changed",
            now=now,
            new={"via": str(via), **({"email_verified": True} if verified else {})},
        )
    user.password = locked.password
    user.email_verified_at = locked.email_verified_at
    return user


def set_notification_preferences(*, user: User, renewal_reminders: bool, now: datetime) -> None:
    """The customer's e-mail preferences (SPEC E1): the renewal reminder may be turned off;
    receipts and account notices cannot."""
    with transaction.atomic(durable=True):
        locked = User.objects.select_for_update(no_key=True).get(pk=user.pk)
        if locked.renewal_reminders == renewal_reminders:
            return
        locked.renewal_reminders = renewal_reminders
        locked.save(update_fields=["renewal_reminders"])
        record_event(
            actor=actor_for(locked),
            subject=locked,
            event_type="user.notifications_changed",
            now=now,
            old={"renewal_reminders": not renewal_reminders},
            new={"renewal_reminders": renewal_reminders},
        )
    user.renewal_reminders = renewal_reminders


class DeletionChannel(StrEnum):
    """The ways in to an account deletion (SPEC D1)."""

    SELF_SERVICE = "self-service"  # the customer, on /account/delete/
    ADMIN = "admin"  # a staff member, in the admin
    COMMAND = "command"  # an operator, `manage.py delete_account`


def deletion_refusal(
    *,
    target: User,
    channel: DeletionChannel,
    by: User | None = None,
    allow_staff: bool = False,
) -> str | None:
    """Who may delete whom (SPEC D1): why `by` may not delete `target` through `channel`, or
    None when they may. The one rule for the admin action, the self-service page and the
    `delete_account` command, which all ask here before calling `delete_account`.

    - Nobody deletes an account twice.
    - Staff and superuser accounts hold the keys to everyone else's: in the admin only a
      superuser deletes one, and never their own (they would lock themselves out mid-action);
      the command needs `allow_staff` (`--allow-staff`), the operator saying so on purpose; the
      self-service page deletes customers' accounts only.
    - Self-service deletes the signed-in customer's own account and nobody else's.
    - An actor named in the admin or the command (`by`) is an active staff member; the command
      without one acts as `system:command`.
    """
    if target.deleted_at is not None:
        return (
            f"This account was already deleted on {target.deleted_at:%Y-%m-%d %H:%M} UTC; "
            "there is nothing left to delete."
        )
    privileged = target.is_staff or target.is_superuser
    if channel == DeletionChannel.SELF_SERVICE:
        if by is None or by.pk != target.pk:
            return "You can delete only your own account."
        if privileged:
            return (
                "A staff account cannot be deleted here: ask a superuser to delete it in the admin."
            )
        return None
    if by is not None and not (by.is_staff and by.is_active and by.deleted_at is None):
        return f"{by.email} is not an active staff member, so it cannot delete accounts."
    if channel == DeletionChannel.ADMIN:
        if by is None:
            return "Only a staff member can delete an account in the admin."
        if by.pk == target.pk:
            return "You cannot delete your own account from the admin."
        if privileged and not by.is_superuser:
            return "Only a superuser can delete a staff account."
        return None
    if by is not None and by.pk == target.pk:
        return "An operator cannot record themselves as the actor of their own account's deletion."
    if privileged and not allow_staff:
        kind = "a superuser" if target.is_superuser else "a staff"
        return f"This is {kind} account: pass --allow-staff to delete it anyway."
    return None


def delete_account(*, user: User, actor: str, now: datetime) -> None:
    """Account deletion (SPEC D1): live subscriptions end now (account_deleted), every BYOK
    entry and availability intent goes, issued credentials are queued for revocation and
    unlinked from the person, personal data is anonymized, tokens and sessions stop working,
    and the e-mail address is free for a new sign-up. Financial records stay, anonymized."""
    with transaction.atomic(durable=True):
        # FOR NO KEY UPDATE, not FOR UPDATE: a purchase that already holds this user's credit
        # account goes on to insert rows referencing the user (the subscription, the
        # credential's holder), which take FOR KEY SHARE on the user row. A plain FOR UPDATE
        # would block them while we wait for that same credit account: a deadlock that
        # PostgreSQL breaks by aborting one side. NO KEY UPDATE still serializes deletions.
        user = User.objects.select_for_update(no_key=True).get(pk=user.pk)
        if user.deleted_at is not None:
            return
        # Lock order: credit account → subscriptions → credentials → BYOK entries. Each app
        # changes its own rows (issue 14); this function orchestrates and writes the user.
        lock_credit_account(user_id=user.pk)
        # A positive balance is forfeited (SPEC M10): a `forfeited` entry brings it to zero.
        forfeited = forfeit_balance(user_id=user.pk, actor=actor, now=now)
        ended = end_account_subscriptions(user=user, actor=actor, now=now)
        forget_holder(user_id=user.pk)
        delete_account_keys(user_id=user.pk)
        revoke_all_tokens(user_id=user.pk, now=now)
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
                "subscriptions_ended": ended,
                "forfeited_micros": -forfeited.amount_micros if forfeited else 0,
            },
        )
