"""BYOK state changes (SPEC B1–B4). Raw keys are encrypted on the way in and decrypted only
by `decrypted_key`, at the moment of an upstream call."""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db import IntegrityError, transaction

from adminops.audit import actor_for, record_event
from byok.errors import InvalidKey, KeyNotFound, ProviderSlotOccupied, UnknownProvider
from byok.models import ByokKey
from byok.signals import announce_installed_key_rejected
from codingplans import crypto, sql
from codingplans.ratelimit import RateLimited, hit
from upstream.providers import registry
from upstream.providers.base import UNREADABLE_KEY_MESSAGE, KeyCheck

KEY_BUDGET_MESSAGE = (
    "Too many key tests and replacements in the last minute. Wait a minute and try again."
)


def _clean_key(api_key: object, provider_id: str) -> str:
    """The key, trimmed, when it has the shape of the provider's keys (SPEC V1)."""
    provider = registry.get(provider_id)
    if (
        not isinstance(api_key, str)
        or provider is None
        or not provider.has_key_shape(api_key.strip())
    ):
        raise InvalidKey()
    return api_key.strip()


def _check_provider(provider_id: object) -> str:
    if registry.get(provider_id) is None:
        raise UnknownProvider()
    return provider_id


def _locked_key(user, key_id: int) -> ByokKey:
    key = ByokKey.objects.select_for_update().filter(user=user, pk=key_id).first()
    if key is None:
        raise KeyNotFound()
    return key


def _state(key: ByokKey) -> dict[str, object]:
    return {
        "enabled": key.enabled,
        "key_hint": key.key_hint,
        "managed_by": key.managed_by,
        "subscription_id": key.subscription_id,
    }


def add_key(*, user, provider_id: str, api_key: str, now: datetime) -> ByokKey:
    """Add the user's key for a provider; the slot holds one entry, enabled or disabled."""
    provider_id = _check_provider(provider_id)
    api_key = _clean_key(api_key, provider_id)
    with transaction.atomic(durable=True):
        if ByokKey.objects.filter(user=user, provider_id=provider_id).exists():
            raise ProviderSlotOccupied()
        try:
            with transaction.atomic():
                key = ByokKey.objects.create(
                    user=user,
                    provider_id=provider_id,
                    encrypted_key=crypto.encrypt(api_key),
                    key_hint=crypto.key_hint(api_key),
                    created_at=now,
                    updated_at=now,
                )
        except IntegrityError as exc:  # raced with a purchase installing its entry
            raise ProviderSlotOccupied() from exc
        record_event(
            actor=actor_for(user), subject=key, event_type="byok.added", now=now, new=_state(key)
        )
    return key


def spend_key_budget(user) -> None:
    """Count one key test or key replacement against the user's budget per minute
    (BYOK_KEY_RATE_LIMIT_PER_MINUTE); over it, RateLimited (429 `rate_limited`). A test sends the
    stored key to its provider, and a replacement stores a new value to test: unlimited, the
    pair would be a free oracle, run from our servers, for checking stolen provider keys."""
    if not hit("byok-key", str(user.pk), limit=settings.BYOK_KEY_RATE_LIMIT_PER_MINUTE):
        raise RateLimited(KEY_BUDGET_MESSAGE)


def update_key(
    *,
    user,
    key_id: int,
    now: datetime,
    api_key: str | None = None,
    enabled: bool | None = None,
) -> ByokKey:
    """Replace the value and/or enable/disable. Replacing unlinks an installed entry (SPEC B3):
    from then on it is the customer's own key."""
    if api_key is not None:
        spend_key_budget(user)
        if not isinstance(api_key, str) or not api_key.strip():
            raise InvalidKey()
    if enabled is not None and not isinstance(enabled, bool):
        raise InvalidKey("`enabled` must be true or false.")
    with transaction.atomic(durable=True):
        key = _locked_key(user, key_id)
        old = _state(key)
        fields = ["updated_at"]
        if api_key is not None:
            api_key = _clean_key(api_key, key.provider_id)  # the shape of its provider's keys
            key.encrypted_key = crypto.encrypt(api_key)
            key.key_hint = crypto.key_hint(api_key)
            fields += ["encrypted_key", "key_hint"]
            if key.managed_by is not None or key.subscription_id is not None:
                # The customer's own key from now on: no plan lifecycle event deletes it (B3).
                key.managed_by = None
                key.subscription = None
                fields += ["managed_by", "subscription"]
        if enabled is not None:
            key.enabled = enabled
            fields.append("enabled")
        key.updated_at = now
        key.save(update_fields=fields)
        record_event(
            actor=actor_for(user),
            subject=key,
            event_type="byok.replaced" if api_key is not None else "byok.updated",
            now=now,
            old=old,
            new=_state(key),
        )
    return key


def delete_key(*, user, key_id: int, now: datetime) -> None:
    with transaction.atomic(durable=True):
        key = _locked_key(user, key_id)
        old = _state(key)
        key_pk = key.pk
        key.delete()
        record_event(
            actor=actor_for(user),
            subject=("byok.byokkey", key_pk),
            event_type="byok.deleted",
            now=now,
            old=old,
        )


def decrypted_key(key: ByokKey) -> str:
    return crypto.decrypt(key.encrypted_key)


def check_stored_key(*, user, key_id: int) -> KeyCheck:
    """A non-mutating call to the provider with the stored key (SPEC B1), within the user's
    key budget (`spend_key_budget`)."""
    spend_key_budget(user)
    key = ByokKey.objects.filter(user=user, pk=key_id).first()
    if key is None:
        raise KeyNotFound()
    try:
        plaintext = decrypted_key(key)
    except crypto.SecretUnavailable:  # encrypted under a key that has since been retired
        return KeyCheck(False, "unreadable", UNREADABLE_KEY_MESSAGE)
    result = registry.provider(key.provider_id).check_key(plaintext)
    if result.error == "invalid_key" and key.subscription_id is not None:
        # A plan's installed entry whose key the provider rejects: the plan's key died (H3).
        announce_installed_key_rejected(
            subscription_id=key.subscription_id, api_key=plaintext, source="byok_test"
        )
    return result


# The installed entry a purchase creates (P4 step 4), as a fragment of the purchase's one
# activation statement: byok owns its table and the format of its encrypted keys, so the
# statement that writes the row comes from here (issue 14), as billing.entry_ctes does for the
# ledger. ON CONFLICT: a key the customer added after the slot check leaves no row, and the
# caller rolls the purchase back as `provider_slot_occupied`.
_INSTALLED_ENTRY_CTE = """
    {name} AS (
        INSERT INTO {table} (id, user_id, provider_id, encrypted_key, key_hint, enabled,
            managed_by, subscription_id, created_at, updated_at)
        VALUES (%(byok_id)s, %(user_id)s, %(provider_id)s, %(byok_encrypted_key)s,
            %(byok_key_hint)s, true, '{managed_by}', %(subscription_id)s, %(now)s, %(now)s)
        ON CONFLICT DO NOTHING
        RETURNING id
    )"""


def installed_entry_cte(name: str = "installed") -> str:
    """A data-modifying WITH clause inserting the installed entry; it returns the new id, or no
    row when the slot was taken meanwhile. Parameters: `byok_id`, `user_id`, `provider_id`,
    `subscription_id`, `now` and those of `installed_entry_params`."""
    return _INSTALLED_ENTRY_CTE.format(
        name=name, table=sql.table(ByokKey), managed_by=ByokKey.ManagedBy.CODING_PLAN
    )


def installed_entry_params(encrypted_credential: str) -> dict[str, str]:
    """The installed entry's key, re-encrypted from the credential's stored value and hinted;
    the plaintext lives only inside this call."""
    plaintext = crypto.decrypt(encrypted_credential)
    try:
        return {
            "byok_encrypted_key": crypto.encrypt(plaintext),
            "byok_key_hint": crypto.key_hint(plaintext),
        }
    finally:
        del plaintext


def rekey_installed_entry(
    *, subscription_id: int, encrypted_credential: str, now: datetime
) -> int | None:
    """A replaced credential (SPEC H3): the installed entry keeps its id, its link and its
    enabled flag, and gets the new key, re-encrypted from the credential's stored value. Only
    while it is still linked: an entry the customer replaced or deleted is theirs, and nothing
    is written (returns None). Caller holds the subscription and credential locks in its
    transaction (the lock order: … → credential → BYOK entry) and audits the replacement."""
    entry = ByokKey.objects.select_for_update().filter(subscription_id=subscription_id).first()
    if entry is None:
        return None
    params = installed_entry_params(encrypted_credential)
    entry.encrypted_key = params["byok_encrypted_key"]
    entry.key_hint = params["byok_key_hint"]
    entry.updated_at = now
    entry.save(update_fields=["encrypted_key", "key_hint", "updated_at"])
    return entry.pk


def remove_installed_entry(*, subscription_id: int, actor: str, now: datetime) -> int | None:
    """At effective cancellation (L3, L5, L6, D1) the installed entry goes only while it is still
    linked to the subscription (B4): a key the customer replaced or re-added is theirs and
    stays. Caller holds the subscription lock in its transaction; returns the removed id."""
    entry = ByokKey.objects.select_for_update().filter(subscription_id=subscription_id).first()
    if entry is None:
        return None
    entry_id = entry.pk
    entry.delete()
    record_event(
        actor=actor,
        subject=("byok.byokkey", entry_id),
        event_type="byok.installed_entry_removed",
        now=now,
        old={"subscription_id": subscription_id},
    )
    return entry_id


def delete_account_keys(*, user_id: int) -> int:
    """Every BYOK entry of an account being deleted (D1), the customer's own keys included.
    Inside accounts.services.delete_account's transaction, audited there (account.deleted)."""
    return ByokKey.objects.filter(user_id=user_id).delete()[0]
