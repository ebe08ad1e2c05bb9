"""Uploading credentials through the admin (SPEC I1-I3): background validation, progress,
report by line, never a key on a page or in the task queue."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from adminops.models import AuditEvent
from inventory import tasks, upload_jobs
from inventory import upload as inventory_upload
from inventory.models import Credential, InventoryUpload
from tests.adminops.conftest import MAX, PLUS, UPLOAD_URL, credential_for, status_url
from upstream.providers import minimax

pytestmark = pytest.mark.django_db


def lines(*keys: str) -> str:
    return "\n".join(f"{key}::up-plan-{i}" for i, key in enumerate(keys, start=1))


def test_upload_form_lists_catalog_plans(operator):
    page = operator.get(UPLOAD_URL)
    assert page.status_code == 200
    html = page.content.decode()
    for plan_id in (PLUS, MAX, "minimax-token-plan-ultra"):
        assert f'value="{plan_id}"' in html
    assert 'enctype="multipart/form-data"' in html and "csrfmiddlewaretoken" in html


def test_pasted_upload_is_validated_in_background_and_stored(operator, admin_upload, superuser):
    # SPEC I1, I3
    text = "\n  sk-up-aaaa00000001::up-1  \n\nsk-up-aaaa00000002::up-2\nsk-up-aaaa00000003::up-3\n"
    page = admin_upload(operator, PLUS, text)
    upload = InventoryUpload.objects.get()
    assert page.request["PATH_INFO"] == status_url(upload.pk)
    html = page.content.decode()
    assert "Stored 3 credentials" in html
    assert upload.status == InventoryUpload.Status.STORED
    assert (upload.line_count, upload.validated_count, upload.stored_count) == (3, 3, 3)
    assert upload.actor == f"staff:{superuser.pk}"
    assert upload.uploaded_by == superuser
    assert upload.encrypted_payload == ""  # erased once processed
    assert upload.finished_at is not None
    stored = Credential.objects.filter(upload=upload)
    assert stored.count() == 3
    assert set(stored.values_list("state", flat=True)) == {"available"}
    assert credential_for("sk-up-aaaa00000002").upstream_plan_id == "up-2"
    assert "sk-up-aaaa" not in html
    events = set(AuditEvent.objects.values_list("event_type", flat=True))
    assert {"inventory.upload_started", "inventory.uploaded"} <= events


def test_file_upload_is_accepted(operator, admin_upload):
    data = lines("sk-file-000000001", "sk-file-000000002").encode()
    page = admin_upload(operator, MAX, file=SimpleUploadedFile("keys.txt", data, "text/plain"))
    assert "Stored 2 credentials" in page.content.decode()
    assert Credential.objects.filter(plan_id=MAX).count() == 2


def test_rejected_validation_names_lines_and_stores_nothing(operator, admin_upload):
    # SPEC I2: one key MiniMax refuses rejects the whole upload; the report names the line
    text = "sk-good-00000001::up-1\n\ninvalid-key-000003::up-3\nsk-good-00000004::up-4\n"
    page = admin_upload(operator, PLUS, text)
    html = page.content.decode()
    upload = InventoryUpload.objects.get()
    assert upload.status == InventoryUpload.Status.REJECTED
    assert upload.encrypted_payload == ""
    assert upload.errors == [
        {
            "line": 3,
            "reason": "failed live validation: "
            + minimax.PROVIDER.validation_reason("invalid_key"),
        }
    ]
    assert "Rejected: nothing was stored" in html
    assert "<td>3</td><td>failed live validation" in html
    assert Credential.objects.count() == 0
    assert "invalid-key" not in html and "sk-good" not in html
    assert AuditEvent.objects.filter(event_type="inventory.upload_rejected").count() == 1


def test_malformed_and_duplicate_lines_are_reported_by_line(operator, admin_upload, stock):
    (existing,) = stock(PLUS, 1)
    text = "\n".join(
        [
            "sk-dup-00000001::up-1",  # 1
            "no separator here",  # 2
            "sk-dup-00000001::up-other",  # 3: duplicate of line 1
            f"{existing}::up-again",  # 4: already stored
            "sk-ok-000000005::",  # 5: no upstream id
        ]
    )
    page = admin_upload(operator, PLUS, text)
    upload = InventoryUpload.objects.get()
    assert upload.status == "rejected"
    assert [e["line"] for e in upload.errors] == [2, 3, 4, 5]
    html = page.content.decode()
    for number in (2, 3, 4, 5):
        assert f"<td>{number}</td>" in html
    assert "duplicate of line 1" in html
    assert Credential.objects.count() == 1  # only the one stocked before
    assert existing not in html and "sk-dup" not in html


def test_form_errors_never_echo_pasted_keys(operator):
    secret = "sk-echo-check-1234567890"
    page = operator.post(UPLOAD_URL, {"plan_id": "no-such-plan", "lines": f"{secret}::up-1"})
    assert page.status_code == 200
    assert "Select a valid choice" in page.content.decode()
    assert secret not in page.content.decode()
    assert InventoryUpload.objects.count() == 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"lines": "\n  \n"}, "There are no credentials to upload."),
        ({"lines": "sk-x-00000001::u", "file": "FILE"}, "Paste the lines or choose a file"),
        ({"file": b"\xff\xfe\x00bad"}, "not UTF-8"),
    ],
)
def test_upload_form_validation(operator, data, message):
    data = dict(data, plan_id=PLUS)
    if data.get("file") == "FILE":
        data["file"] = SimpleUploadedFile("k.txt", b"sk-y-00000001::u")
    elif isinstance(data.get("file"), bytes):
        data["file"] = SimpleUploadedFile("k.txt", data["file"])
    page = operator.post(UPLOAD_URL, data)
    assert page.status_code == 200
    assert message in page.content.decode()
    assert InventoryUpload.objects.count() == 0


def test_too_many_lines_are_refused_before_anything_is_queued(operator, monkeypatch):
    monkeypatch.setattr(inventory_upload, "MAX_LINES", 3)
    page = operator.post(
        UPLOAD_URL, {"plan_id": PLUS, "lines": lines(*[f"sk-m-{i:08d}" for i in range(4)])}
    )
    assert "Too many lines: at most 3" in page.content.decode()
    assert InventoryUpload.objects.count() == 0


def test_status_page_shows_progress_and_refreshes_while_running(operator, superuser):
    upload = upload_jobs.start_upload(
        plan_id=PLUS,
        text=lines(*[f"sk-run-{i:08d}" for i in range(25)]),
        user=superuser,
        now=timezone.now(),
    )
    InventoryUpload.objects.filter(pk=upload.pk).update(
        status=InventoryUpload.Status.VALIDATING, validated_count=10
    )
    html = operator.get(status_url(upload.pk)).content.decode()
    assert '<meta http-equiv="refresh" content="2">' in html
    assert "Validated 10 of 25 credentials" in html
    assert 'max="25" value="10"' in html
    assert "sk-run" not in html and upload.encrypted_payload not in html

    InventoryUpload.objects.filter(pk=upload.pk).update(status=InventoryUpload.Status.PENDING)
    upload_jobs.process_upload(upload.pk, timezone.now())
    done = operator.get(status_url(upload.pk)).content.decode()
    assert 'http-equiv="refresh"' not in done
    assert "Stored 25 credentials" in done


def test_stale_pending_upload_warns_about_the_worker(operator, superuser):
    upload = upload_jobs.start_upload(
        plan_id=PLUS,
        text="sk-stale-0000001::u",
        user=superuser,
        now=timezone.now() - timezone.timedelta(minutes=30),
    )
    html = operator.get(status_url(upload.pk)).content.decode()
    assert "Check that the Celery worker is running" in html


def test_upload_change_page_redirects_to_status(operator, superuser):
    upload = upload_jobs.start_upload(
        plan_id=PLUS, text="sk-redir-000001::u", user=superuser, now=timezone.now()
    )
    page = operator.get(f"/admin/inventory/inventoryupload/{upload.pk}/change/")
    assert page.status_code == 302 and page["Location"] == status_url(upload.pk)
    assert operator.get(status_url(999999)).status_code == 404


def test_progress_updates_are_throttled(superuser):
    upload = upload_jobs.start_upload(
        plan_id=PLUS,
        text=lines(*[f"sk-thr-{i:08d}" for i in range(25)]),
        user=superuser,
        now=timezone.now(),
    )
    with CaptureQueriesContext(connection) as queries:
        upload_jobs.process_upload(upload.pk, timezone.now())
    progress_updates = [
        q["sql"]
        for q in queries.captured_queries
        if q["sql"].startswith("UPDATE") and '"validated_count" =' in q["sql"]
    ]
    assert len(progress_updates) == 3  # at 10, 20 and 25
    upload.refresh_from_db()
    assert upload.validated_count == 25 and upload.status == "stored"


def test_processing_twice_stores_once(superuser):
    upload = upload_jobs.start_upload(
        plan_id=PLUS, text="sk-twice-000001::u", user=superuser, now=timezone.now()
    )
    first = upload_jobs.process_upload(upload.pk, timezone.now())
    again = upload_jobs.process_upload(upload.pk, timezone.now())
    assert first.status == again.status == "stored"
    assert Credential.objects.count() == 1


def test_only_the_upload_id_goes_through_the_task_queue(
    operator, monkeypatch, django_capture_on_commit_callbacks
):
    # Keys never travel through Celery/Redis: the task gets an id; the row holds ciphertext.
    sent = []
    monkeypatch.setattr(tasks.process_upload, "delay", lambda *a, **k: sent.append((a, k)))
    key = "sk-queue-check-000001"
    with django_capture_on_commit_callbacks(execute=True):
        operator.post(UPLOAD_URL, {"plan_id": PLUS, "lines": f"{key}::up-q"})
    upload = InventoryUpload.objects.get()
    assert sent == [((upload.pk,), {})]
    assert upload.status == "pending"
    assert upload.encrypted_payload and key not in upload.encrypted_payload
    assert "up-q" not in upload.encrypted_payload


def test_upload_that_cannot_be_queued_is_rejected_and_erased(
    operator, monkeypatch, django_capture_on_commit_callbacks
):
    def broken(*args, **kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr(tasks.process_upload, "delay", broken)
    with django_capture_on_commit_callbacks(execute=True):
        response = operator.post(UPLOAD_URL, {"plan_id": PLUS, "lines": "sk-noqueue-00001::u"})
    page = operator.get(response["Location"])
    upload = InventoryUpload.objects.get()
    assert upload.status == "rejected" and upload.encrypted_payload == ""
    assert "could not be started" in page.content.decode()
