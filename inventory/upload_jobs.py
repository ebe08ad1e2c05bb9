"""The admin's upload in two steps (SPEC I1–I3): recorded now, validated in the background.

`start_upload` keeps the pasted credentials encrypted in an `InventoryUpload` row and queues its
processing after commit (the task queue carries the upload id, never a key); `process_upload`
runs `inventory.upload.upload_credentials` on it, recording progress and the report, and erases
the payload. Uploads never processed are expired after 24 hours (`purge_abandoned_uploads`).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from functools import partial

from django.db import transaction
from django.utils import timezone

from adminops.audit import record_event
from catalog import get_plan
from codingplans import crypto
from inventory.errors import UnknownPlan, UploadExpired, UploadNotFound
from inventory.models import Credential, InventoryUpload
from inventory.upload import UploadReport, count_credential_lines, upload_credentials

logger = logging.getLogger(__name__)

UPLOAD_PROGRESS_EVERY = 10


def start_upload(*, plan_id: str, text: str, user, now: datetime) -> InventoryUpload:
    """Record an admin upload and queue its background validation (`process_upload`) once the
    row is committed.

    The pasted credentials are kept only encrypted, in this row, until processing erases them:
    the task queue carries the upload id, never a key. A broker that cannot take the task
    rejects the upload (erasing its payload) instead of leaving it pending.
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
        transaction.on_commit(partial(_queue_processing, upload.pk))
    return upload


def _queue_processing(upload_id: int) -> None:
    from inventory.tasks import process_upload as process_upload_task

    try:
        process_upload_task.delay(upload_id)
    except Exception:
        logger.exception("could not queue inventory upload %s", upload_id)
        abandon_upload(
            upload_id,
            message="The validation could not be started; nothing was stored. Upload again.",
            now=timezone.now(),
        )


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
