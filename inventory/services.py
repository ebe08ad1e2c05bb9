"""Inventory state changes (SPEC I1–I5, R2–R3).

Uploads are all-or-nothing: parse and de-duplicate first, validate every key live against
MiniMax with bounded concurrency, then store everything in one transaction — or nothing.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import httpx
from django.db import IntegrityError, transaction

from adminops.audit import record_event
from catalog import get_plan
from codingplans import crypto, sql
from codingplans.redaction import redact
from inventory.errors import (
    InvalidRevocationOutcome,
    InvalidRevocationState,
    RevocationItemNotFound,
    RevocationNoteRequired,
    UnknownPlan,
    UploadExpired,
    UploadNotFound,
)
from inventory.models import Credential, InventoryUpload
from upstream import client as minimax

DEFAULT_VALIDATION_CONCURRENCY = 10
MAX_LINES = 10_000
_UPSTREAM_ID_SHAPE = re.compile(r"^[\x21-\x7e]{1,200}$")

VALIDATION_REASONS = {
    "invalid_key": "MiniMax rejected the key (invalid or already deactivated)",
    "network": "MiniMax could not be reached or did not answer in time",
    "http": "MiniMax returned an error status",
    "invalid_response": "MiniMax sent a response that was not a valid completion",
}


@dataclass
class UploadReport:
    stored: int = 0
    errors: list[dict[str, object]] = field(default_factory=list)
    message: str = ""

    @property
    def ok(self) -> bool:
        return not self.errors and not self.message

    def as_json(self) -> dict[str, object]:
        return {"stored": self.stored, "errors": self.errors}


@dataclass(frozen=True)
class _Line:
    number: int
    api_key: str
    upstream_plan_id: str
    fingerprint: str


def _parse(text: str) -> tuple[list[_Line], list[dict[str, object]]]:
    """One credential per line, `<api key>::<upstream plan id>`; blank lines ignored (I1)."""
    lines: list[_Line] = []
    errors: list[dict[str, object]] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        key, sep, upstream_id = line.partition("::")
        key, upstream_id = key.strip(), upstream_id.strip()
        if not sep:
            errors.append(
                {"line": number, "reason": "malformed: expected <api key>::<upstream plan id>"}
            )
            continue
        if not minimax.has_key_shape(key):
            errors.append(
                {
                    "line": number,
                    "reason": "malformed: the API key is empty or not a single token of "
                    "8–512 characters",
                }
            )
            continue
        if not _UPSTREAM_ID_SHAPE.match(upstream_id):
            errors.append(
                {
                    "line": number,
                    "reason": "malformed: the upstream plan id is empty or not a single token",
                }
            )
            continue
        fp = crypto.fingerprint(key)
        if fp in seen:
            errors.append(
                {"line": number, "reason": f"duplicate of line {seen[fp]} in this upload"}
            )
            continue
        seen[fp] = number
        lines.append(_Line(number, key, upstream_id, fp))
    return lines, errors


def _validate_live(
    lines: list[_Line],
    *,
    concurrency: int,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[dict[str, object]], int, bool]:
    """One minimal call per key (I3), at most `concurrency` at once, each with the client timeout.

    Returns (errors, keys left unchecked, whether MiniMax was unreachable). Once MiniMax is
    unreachable or times out, the upload is rejected whatever the other keys would say, so the
    keys not yet sent are not tried: a rejected upload then takes about one timeout, not one
    timeout per `concurrency` keys (a 10,000-line file would otherwise hang for hours).
    """
    concurrency = max(1, min(int(concurrency), 50))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    errors: list[dict[str, object]] = []
    done = 0
    skipped = 0
    unreachable = threading.Event()

    def check(line: _Line, http: httpx.Client) -> minimax.KeyCheck | None:
        if unreachable.is_set():  # set by whichever worker saw it first, before it takes more
            return None
        result = minimax.check_key(line.api_key, client=http)
        if result.error == "network":
            unreachable.set()
        return result

    with minimax.make_client(limits=limits) as http, ThreadPoolExecutor(concurrency) as pool:
        futures = {pool.submit(check, line, http): line for line in lines}
        for future in as_completed(futures):
            result = future.result()
            if result is None:
                skipped += 1
                continue
            if not result.ok:
                reason = VALIDATION_REASONS.get(result.error or "", "validation failed")
                line = futures[future]
                errors.append({"line": line.number, "reason": f"failed live validation: {reason}"})
            done += 1
            if progress is not None:
                progress(done)
    return errors, skipped, unreachable.is_set()


def upload_credentials(
    *,
    plan_id: str,
    text: str,
    actor: str,
    now: datetime,
    concurrency: int = DEFAULT_VALIDATION_CONCURRENCY,
    progress: Callable[[int, int], None] | None = None,
    upload: InventoryUpload | None = None,
) -> UploadReport:
    """Parse, de-duplicate (within the file and against every credential ever stored), validate
    live, then store all or nothing (I1–I3). The report names lines and reasons, never keys."""
    if get_plan(plan_id) is None:
        raise UnknownPlan()
    report = UploadReport()
    lines, report.errors = _parse(text)
    if len(lines) + len(report.errors) > MAX_LINES:
        report.message = f"Too many lines: at most {MAX_LINES} credentials per upload."
        return report
    if not lines and not report.errors:
        report.message = "The upload holds no credentials."
        return report
    known = set(
        Credential.objects.filter(fingerprint__in=[line.fingerprint for line in lines]).values_list(
            "fingerprint", flat=True
        )
    )
    fresh = []
    for line in lines:
        if line.fingerprint in known:
            report.errors.append(
                {
                    "line": line.number,
                    "reason": "duplicate of a credential already stored (in any state)",
                }
            )
        else:
            fresh.append(line)
    if report.errors:
        report.errors.sort(key=lambda e: e["line"])
        report.message = "Nothing was stored. Fix the lines listed and upload the whole file again."
        return report

    total = len(fresh)
    report.errors, unchecked, unreachable = _validate_live(
        fresh,
        concurrency=concurrency,
        progress=(lambda done: progress(done, total)) if progress else None,
    )
    if report.errors:
        report.errors.sort(key=lambda e: e["line"])
        if unreachable:
            report.message = (
                "Nothing was stored: MiniMax could not be reached or did not answer in time"
                + (f" ({unchecked} credential(s) were not checked)" if unchecked else "")
                + ". Try the whole upload again later."
            )
        else:
            report.message = "Nothing was stored: some credentials failed live validation."
        return report

    try:
        with transaction.atomic(durable=True):
            Credential.objects.bulk_create(
                [
                    Credential(
                        plan_id=plan_id,
                        state=Credential.State.AVAILABLE,
                        encrypted_key=crypto.encrypt(line.api_key),
                        fingerprint=line.fingerprint,
                        upstream_plan_id=line.upstream_plan_id,
                        upload=upload,
                        created_at=now,
                    )
                    for line in fresh
                ]
            )
            record_event(
                actor=actor,
                # The admin upload's own row (as its start and rejection are), so filtering the
                # trail by that upload shows its whole story; a command upload has no row.
                subject=upload if upload is not None else ("inventory.plan", plan_id),
                event_type="inventory.uploaded",
                now=now,
                new={"plan_id": plan_id, "stored": total},
            )
            # robust: the credentials are stored once this commits; a broker that is down must
            # not turn a stored upload into an error (the operator would re-upload duplicates).
            transaction.on_commit(lambda: _after_restock(plan_id), robust=True)
    except IntegrityError:
        # The same key was stored by a concurrent upload between our check and the insert.
        # Name the clashing lines (I2), as the check before validation would have.
        clashing = set(
            Credential.objects.filter(
                fingerprint__in=[line.fingerprint for line in fresh]
            ).values_list("fingerprint", flat=True)
        )
        reason = "duplicate of a credential stored meanwhile by another upload"
        report.message = "Nothing was stored: a credential in this file was uploaded meanwhile."
        report.errors = [
            {"line": line.number, "reason": reason}
            for line in fresh
            if line.fingerprint in clashing
        ] or [{"line": 0, "reason": reason}]
        return report
    report.stored = total
    return report


def _after_restock(plan_id: str) -> None:
    from inventory.alerts import rearm_low_stock
    from inventory.signals import announce_restock

    rearm_low_stock(plan_id=plan_id)
    announce_restock(plan_id)


_CLAIM_SQL = """
    UPDATE {table} SET state = %s, assigned_to_id = %s, holder_ref = %s, assigned_at = %s
    WHERE id = (
        SELECT id FROM {table} WHERE plan_id = %s AND state = '{available}'
        ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED
    )
    RETURNING id, encrypted_key
"""


@dataclass(frozen=True)
class ClaimedCredential:
    id: int
    # The encrypted value, decrypted only where it is installed (never logged or shown).
    encrypted_key: str = field(repr=False)


def claim_credential(*, plan_id: str, user, now: datetime) -> ClaimedCredential | None:
    """Take one available credential for the plan inside the caller's transaction (P4 step 3).

    SKIP LOCKED: concurrent purchases each get a different row instead of queueing on one.
    One statement claims and assigns it (issue 8: purchase throughput).
    """
    row = sql.execute(
        # The state as a literal, not a parameter: a prepared statement's generic plan can use
        # the partial index on available credentials only when it sees the state it filters on.
        _CLAIM_SQL.format(table=sql.table(Credential), available=Credential.State.AVAILABLE),
        [
            Credential.State.ASSIGNED,
            user.pk,
            crypto.fingerprint(str(user.pk), purpose="holder")[:32],
            now,
            plan_id,
        ],
    )
    return None if row is None else ClaimedCredential(id=row.id, encrypted_key=row.encrypted_key)


def request_revocation(*, credential: Credential, actor: str, now: datetime) -> None:
    """assigned → revocation_pending, erasing the encrypted key (I4, I5). Caller holds the lock
    on the credential's subscription, inside its transaction."""
    if credential.state != Credential.State.ASSIGNED:
        return
    old = credential.state
    credential.state = Credential.State.REVOCATION_PENDING
    credential.encrypted_key = ""
    credential.revocation_requested_at = now
    credential.save(update_fields=["state", "encrypted_key", "revocation_requested_at"])
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


# --- Admin uploads in the background (I1-I3) ---------------------------------------------------

UPLOAD_PROGRESS_EVERY = 10


def count_credential_lines(text: str) -> int:
    """Non-blank lines: what an upload will try to store (blank lines are ignored, I1)."""
    return sum(1 for line in text.splitlines() if line.strip())


def start_upload(*, plan_id: str, text: str, user, now: datetime) -> InventoryUpload:
    """Record an admin upload for background validation (`process_upload`).

    The pasted credentials are kept only encrypted, in this row, until processing erases them:
    the task queue carries the upload id, never a key.
    """
    if get_plan(plan_id) is None:
        raise UnknownPlan()
    actor = f"staff:{user.pk}"
    line_count = count_credential_lines(text)
    with transaction.atomic(durable=True):
        upload = InventoryUpload.objects.create(
            plan_id=plan_id,
            status=InventoryUpload.Status.PENDING,
            uploaded_by=user,
            actor=actor,
            encrypted_payload=crypto.encrypt(text),
            line_count=line_count,
            created_at=now,
        )
        record_event(
            actor=actor,
            subject=upload,
            event_type="inventory.upload_started",
            now=now,
            new={"plan_id": plan_id, "lines": line_count},
        )
    return upload


def process_upload(upload_id: int, now: datetime) -> InventoryUpload:
    """Validate and store a pending upload (all or nothing), recording progress and the report.

    Safe to repeat: only a `pending` upload is claimed; a repeated task returns the row as is.
    Whatever happens, the encrypted payload is erased at the end.
    """
    claimed = InventoryUpload.objects.filter(
        pk=upload_id, status=InventoryUpload.Status.PENDING
    ).update(status=InventoryUpload.Status.VALIDATING)
    upload = InventoryUpload.objects.filter(pk=upload_id).first()
    if upload is None:
        raise UploadNotFound()
    if not claimed:
        if upload.status == InventoryUpload.Status.EXPIRED:
            raise UploadExpired()
        return upload
    try:
        text = crypto.decrypt(upload.encrypted_payload)
    except crypto.SecretUnavailable:
        return _finish_upload(
            upload,
            stored=0,
            errors=[],
            message="The pasted credentials could not be read back; nothing was stored. "
            "Upload the file again.",
            now=now,
        )

    reported = 0

    def progress(done: int, total: int) -> None:
        nonlocal reported
        if done - reported >= UPLOAD_PROGRESS_EVERY or done >= total:
            reported = done
            # Autocommit, outside the storing transaction, so the status page sees it move.
            InventoryUpload.objects.filter(pk=upload.pk).update(validated_count=done)

    try:
        report = upload_credentials(
            plan_id=upload.plan_id,
            text=text,
            actor=upload.actor,
            now=now,
            progress=progress,
            upload=upload,
        )
    except UnknownPlan:
        report = UploadReport(message="The plan is no longer in the catalog; nothing was stored.")
    except Exception:
        # The insert either committed (an after-commit hook failed) or rolled back entirely.
        stored = Credential.objects.filter(upload_id=upload.pk).count()
        _finish_upload(
            upload,
            stored=stored,
            errors=[],
            message="" if stored else "Validation stopped unexpectedly; nothing was stored.",
            now=now,
        )
        raise
    finally:
        text = ""
    return _finish_upload(
        upload, stored=report.stored, errors=report.errors, message=report.message, now=now
    )


UPLOAD_PAYLOAD_MAX_AGE = timedelta(hours=24)


def purge_abandoned_uploads(*, now: datetime) -> int:
    """Erase the encrypted payload of every admin upload still `pending` more than 24 hours
    after it was started (its validation was never queued or the worker lost it) and mark it
    `expired`, so pasted keys are not kept forever (I5; issue 13 item 11). Returns how many.
    Safe to repeat; an expired upload can no longer be processed (`UploadExpired`)."""
    purged = 0
    cutoff = now - UPLOAD_PAYLOAD_MAX_AGE
    stale = InventoryUpload.objects.filter(
        status=InventoryUpload.Status.PENDING, created_at__lt=cutoff
    )
    for upload_id in stale.order_by("id").values_list("id", flat=True):
        with transaction.atomic(durable=True):
            upload = (
                InventoryUpload.objects.select_for_update()
                .defer("encrypted_payload")
                .filter(pk=upload_id, status=InventoryUpload.Status.PENDING, created_at__lt=cutoff)
                .first()
            )
            if upload is None:
                continue  # processed or purged meanwhile
            InventoryUpload.objects.filter(pk=upload_id).update(
                status=InventoryUpload.Status.EXPIRED,
                encrypted_payload="",
                message=UploadExpired.default_message[:500],
                finished_at=now,
            )
            record_event(
                actor="system:cleanup",
                subject=upload,
                event_type="inventory.upload_expired",
                now=now,
                old={"status": InventoryUpload.Status.PENDING},
                new={"status": InventoryUpload.Status.EXPIRED},
            )
        purged += 1
    return purged


def abandon_upload(upload_id: int, *, message: str, now: datetime) -> None:
    """Reject a still-pending upload that could not be queued, erasing its payload."""
    upload = InventoryUpload.objects.filter(
        pk=upload_id, status=InventoryUpload.Status.PENDING
    ).first()
    if upload is not None:
        _finish_upload(upload, stored=0, errors=[], message=message, now=now)


def _finish_upload(
    upload: InventoryUpload,
    *,
    stored: int,
    errors: list[dict[str, object]],
    message: str,
    now: datetime,
) -> InventoryUpload:
    status = InventoryUpload.Status.STORED if stored else InventoryUpload.Status.REJECTED
    with transaction.atomic(durable=True):
        InventoryUpload.objects.filter(pk=upload.pk).update(
            status=status,
            stored_count=stored,
            errors=errors,
            message=message[:500],
            finished_at=now,
            encrypted_payload="",
        )
        if status == InventoryUpload.Status.REJECTED:
            record_event(
                actor=upload.actor,
                subject=upload,
                event_type="inventory.upload_rejected",
                now=now,
                new={"plan_id": upload.plan_id, "problems": len(errors)},
            )
    upload.refresh_from_db()
    return upload


# --- Revocation outcomes (R2-R3) ---------------------------------------------------------------

REVOCABLE_STATES = (Credential.State.REVOCATION_PENDING, Credential.State.REVOCATION_FAILED)
REVOCATION_OUTCOMES = (Credential.State.REVOKED, Credential.State.REVOCATION_FAILED)


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
    if outcome == Credential.State.REVOCATION_FAILED and not cleaned:
        raise RevocationNoteRequired()
    try:
        pk = int(str(credential_id))
    except ValueError:
        raise RevocationItemNotFound() from None
    with transaction.atomic(durable=True):
        credential = Credential.objects.select_for_update().filter(pk=pk).first()
        if credential is None:
            raise RevocationItemNotFound(f"There is no credential #{pk}.")
        if credential.state not in REVOCABLE_STATES:
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
