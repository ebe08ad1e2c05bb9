"""Inventory state changes outside the upload (SPEC I4–I5, R2–R3, D1): the claim at purchase,
revocation requests and their outcomes, and forgetting a deleted account.

The upload itself is in `inventory.upload` (parse, validate, store) and `inventory.upload_jobs`
(the admin's background upload).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import cache

from django.db import transaction

from adminops.audit import record_event
from catalog import get_plan
from codingplans import crypto, sql
from codingplans.redaction import redact
from inventory.alerts import stock_check_needed
from inventory.errors import (
    CredentialNotFound,
    InvalidCredentialState,
    InvalidRevocationOutcome,
    InvalidRevocationState,
    RetireNoteRequired,
    RevocationItemNotFound,
    RevocationNoteRequired,
)
from inventory.models import Credential, LowStockAlert

# The claim, and in the same statement what the low-stock rule needs to know whether this claim
# may have taken the plan to its threshold (`inventory.alerts.stock_check_needed`): the
# available rows this statement's snapshot sees (its own included), counted only up to the
# bound that rule uses, the server's connection limit, and whether an alert is armed. The
# purchase then runs the exact check after its commit only near the threshold, not a query
# per purchase (issue 20).
#
# Where the claim looks first. Claims took the lowest available id, so a plan's index of
# available credentials kept, at its low end, an entry for every credential sold since the
# last VACUUM (an update that ends a row's availability leaves the old entry behind), and a
# scan from the low end walked all of them: a purchase slowed as the plan sold (about 0.35 ms
# of database time per purchase after a few thousand sales, the largest statement in the
# purchase; issue 20). The claim therefore looks above the last id this process claimed for
# the plan first (`above`), and only when nothing is free there, below it (`below`, never run
# otherwise: PostgreSQL reads a CTE only as far as its reader asks, and LIMIT 1 stops at the
# first row). Both halves together are every available row, so `sold_out` means what it
# meant; a credential freed below the mark (a rolled-back purchase, a re-tested key) is taken
# once the rows above it are gone. The count walks from the high end for the same reason.
_CLAIM_CTE = """
    {name}_above AS (
        SELECT id FROM {table} WHERE plan_id = %(claim_plan)s AND state = '{available}'
            AND id > %(claim_after)s
        ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED
    ),
    {name}_below AS (
        SELECT id FROM {table} WHERE plan_id = %(claim_plan)s AND state = '{available}'
            AND id <= %(claim_after)s
        ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED
    ),
    {name} AS (
        UPDATE {table} SET state = %(claim_state)s, assigned_to_id = %(claim_user)s,
            holder_ref = %(claim_holder)s, assigned_at = %(claim_now)s
        WHERE ({when})
            AND id = (SELECT id FROM {name}_above UNION ALL SELECT id FROM {name}_below LIMIT 1)
        RETURNING id AS credential_id, encrypted_key AS credential_key,
            (SELECT count(*) FROM (
                SELECT 1 FROM {table} WHERE plan_id = %(claim_plan)s AND state = '{available}'
                ORDER BY id DESC
                LIMIT {threshold:d} + current_setting('max_connections')::int + 2
            ) AS seen) AS stock_seen,
            current_setting('max_connections')::int AS max_connections,
            {threshold:d} AS stock_threshold,
            EXISTS (SELECT 1 FROM {alert} WHERE plan_id = %(claim_plan)s
                    AND alerted_at IS NOT NULL) AS alert_armed
    )"""

# The last id this process claimed, per plan: where the next claim starts looking. A hint
# only (a new process starts at 0, a stale mark costs one longer scan), never a rule.
_claimed_mark: dict[str, int] = {}


@dataclass(frozen=True)
class ClaimedCredential:
    id: int
    # The encrypted value, decrypted only where it is installed (never logged or shown).
    encrypted_key: str = field(repr=False)
    # Whether this claim may have taken the plan to its low-stock threshold: the caller then
    # runs `inventory.alerts.check_low_stock` after its commit (SPEC I7, O3).
    stock_check: bool = True


@cache
def claim_cte(name: str, *, threshold: int, when: str = "true") -> str:
    """The claim as data-modifying WITH clauses (`name` and two helpers named after it), for a
    statement that decides in the same round trip whether to claim: the purchase reads its
    checks and claims in one statement (issue 20). `when` is an SQL condition evaluated once,
    before any credential is read or locked (PostgreSQL's one-time filter; it must not refer
    to the credential table); when it is false nothing is claimed and nothing locked. `name`
    has one row when a credential was claimed, none when the plan is sold out (or `when` was
    false); read it with `claimed_credential`. Parameters: `claim_params`.

    The state is a literal, not a parameter: a prepared statement's generic plan can use the
    partial index on available credentials only when it sees the state it filters on. So is
    the plan's low-stock `threshold`, which bounds the count: with a parameter in its LIMIT
    the planner guesses a tenth of the plan's stock, and once a plan has thousands of
    credentials that guess made PostgreSQL plan the statement afresh at every purchase (a
    custom plan, 0.3 ms, more than running it; issue 20)."""
    return _CLAIM_CTE.format(
        name=name,
        when=when,
        threshold=threshold,
        table=sql.table(Credential),
        available=Credential.State.AVAILABLE,
        alert=sql.table(LowStockAlert),
    )


def _low_stock_threshold(plan_id: str) -> int:
    """The plan's low-stock threshold (SPEC I7), 0 for a plan the catalog no longer has."""
    plan = get_plan(plan_id)
    return plan.low_stock_threshold if plan is not None else 0


def claim_params(*, plan_id: str, user, now: datetime) -> dict[str, object]:
    """`claim_cte`'s parameters: the credential goes to `user` (its holder reference keyed,
    never the id itself)."""
    return {
        "claim_state": Credential.State.ASSIGNED,
        "claim_user": user.pk,
        "claim_holder": crypto.fingerprint(str(user.pk), purpose="holder")[:32],
        "claim_now": now,
        "claim_plan": plan_id,
        "claim_after": _claimed_mark.get(plan_id, 0),
    }


def claimed_credential(row, *, plan_id: str) -> ClaimedCredential | None:
    """The credential a `claim_cte` statement claimed, from its result row (None: nothing was
    claimed), and whether the low-stock check must follow its commit."""
    if row is None or row.credential_id is None:
        return None
    _claimed_mark[plan_id] = row.credential_id
    return ClaimedCredential(
        id=row.credential_id,
        encrypted_key=row.credential_key,
        # Judged with the threshold the statement counted against (it returns it), so the
        # count's bound and the rule cannot come from two lookups.
        stock_check=row.alert_armed
        or stock_check_needed(
            seen=row.stock_seen, threshold=row.stock_threshold, concurrency=row.max_connections
        ),
    )


def claim_credential(*, plan_id: str, user, now: datetime) -> ClaimedCredential | None:
    """Take one available credential for the plan inside the caller's transaction (P4 step 3).

    SKIP LOCKED: concurrent purchases each get a different row instead of queueing on one.
    One statement claims and assigns it (issue 8: purchase throughput), and says whether the
    low-stock check must follow.
    """
    row = sql.execute(
        f"WITH {claim_cte('claimed', threshold=_low_stock_threshold(plan_id))} "  # noqa: S608 - our fragment
        "SELECT * FROM claimed",
        claim_params(plan_id=plan_id, user=user, now=now),
    )
    return claimed_credential(row, plan_id=plan_id)


def request_revocation(
    *, credential: Credential, actor: str, now: datetime, audit: bool = True
) -> None:
    """assigned → revocation_pending, erasing the encrypted key (I4, I5). Caller holds the lock
    on the credential's subscription, inside its transaction. `audit=False`: the caller's one
    audit event records it (a credential replacement, SPEC H3)."""
    if credential.state != Credential.State.ASSIGNED:
        return
    old = credential.state
    credential.state = Credential.State.REVOCATION_PENDING
    credential.encrypted_key = ""
    credential.revocation_requested_at = now
    credential.save(update_fields=["state", "encrypted_key", "revocation_requested_at"])
    if not audit:
        return
    record_event(
        actor=actor,
        subject=credential,
        event_type="credential.revocation_requested",
        now=now,
        old={"state": old},
        new={"state": credential.state},
    )


def sanitize_note(note: str) -> str:
    """Support's failure note: key-shaped strings redacted, at most 500 characters (R2)."""
    cleaned = redact(" ".join(str(note).split()))
    return cleaned[:500]


def decrypted_key(credential: Credential) -> str:
    """Only for the upstream call that needs it (quota, validation); never displayed."""
    return crypto.decrypt(credential.encrypted_key)


# --- Revocation outcomes (R2-R3) ---------------------------------------------------------------

REVOCATION_OUTCOMES = (Credential.State.REVOKED, Credential.State.REVOCATION_FAILED)


def revocation_note_missing(outcome: str | None, note: str) -> bool:
    """A failed revocation must say what went wrong (R2): the service and the admin's form both
    ask this, with the note as it will be stored (sanitized)."""
    return outcome == Credential.State.REVOCATION_FAILED and not note


def record_revocation_outcome(
    *, credential_id: object, outcome: str, note: str, actor: str, now: datetime
) -> Credential:
    """Support's outcome for a revocation work item (R2): `revoked` (final) or
    `revocation_failed` with a note, stored sanitized. Every record counts an attempt.

    Touches only the credential and the audit log: never a subscription or a BYOK entry (R3).
    """
    if outcome not in {state.value for state in REVOCATION_OUTCOMES}:
        raise InvalidRevocationOutcome()
    cleaned = sanitize_note(note or "")
    if revocation_note_missing(outcome, cleaned):
        raise RevocationNoteRequired()
    try:
        pk = int(str(credential_id))
    except ValueError:
        raise RevocationItemNotFound() from None
    with transaction.atomic(durable=True):
        credential = Credential.objects.select_for_update().filter(pk=pk).first()
        if credential is None:
            raise RevocationItemNotFound(f"There is no credential #{pk}.")
        if credential.state not in Credential.REVOCABLE_STATES:
            raise InvalidRevocationState(
                f"Credential #{pk} is {credential.state}: only revocation_pending or "
                "revocation_failed items take an outcome (revoked is final)."
            )
        old = {"state": credential.state, "revocation_attempts": credential.revocation_attempts}
        credential.state = outcome
        credential.revocation_attempts += 1
        credential.last_attempt_at = now
        fields = ["state", "revocation_attempts", "last_attempt_at"]
        if cleaned:
            credential.failure_note = cleaned
            fields.append("failure_note")
        if outcome == Credential.State.REVOKED:
            credential.revoked_at = now
            fields.append("revoked_at")
        credential.save(update_fields=fields)
        record_event(
            actor=actor,
            subject=credential,
            event_type=f"credential.{outcome}",
            now=now,
            old=old,
            new={
                "state": credential.state,
                "revocation_attempts": credential.revocation_attempts,
                "note": cleaned,
            },
        )
    return credential


def forget_holder(*, user_id: int) -> int:
    """An account is deleted (D1): its credentials keep only the anonymous holder reference they
    were given at the claim. Inside delete_account's transaction, audited there."""
    return Credential.objects.filter(assigned_to_id=user_id).update(assigned_to=None)


# --- Retiring stock (SPEC H2) -------------------------------------------------------------------


def lock_credential(credential_id: object) -> Credential:
    """The credential, locked in the caller's transaction; CredentialNotFound otherwise."""
    try:
        pk = int(str(credential_id))
    except ValueError:
        raise CredentialNotFound() from None
    credential = Credential.objects.select_for_update().filter(pk=pk).first()
    if credential is None:
        raise CredentialNotFound(f"There is no credential #{pk}.")
    return credential


def retire_credential(*, credential_id: object, note: str, actor: str, now: datetime) -> Credential:
    """Staff retire stock that was never sold (H2): `available` or `quarantined` →
    `revocation_pending` with a note (stored sanitized), the key erased (I5), so support
    deprovisions it at the provider through the revocation queue (R1)."""
    cleaned = sanitize_note(note or "")
    if not cleaned:
        raise RetireNoteRequired()
    with transaction.atomic(durable=True):
        credential = lock_credential(credential_id)
        if credential.state not in Credential.RETIRABLE_STATES:
            raise InvalidCredentialState(
                f"Credential #{credential.pk} is {credential.state}: only available or "
                "quarantined credentials can be retired (a sold one is revoked when its "
                "subscription ends or its key is replaced)."
            )
        old = {"state": credential.state}
        credential.state = Credential.State.REVOCATION_PENDING
        credential.encrypted_key = ""
        credential.revocation_requested_at = now
        credential.failure_note = cleaned
        credential.save(
            update_fields=["state", "encrypted_key", "revocation_requested_at", "failure_note"]
        )
        record_event(
            actor=actor,
            subject=credential,
            event_type="credential.retired",
            now=now,
            old=old,
            new={"state": credential.state, "note": cleaned},
        )
    return credential
