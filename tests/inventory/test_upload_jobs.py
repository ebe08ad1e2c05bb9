"""The admin's upload is queued by the service, not by the admin (issue 14): `start_upload`
records the pending upload and queues its background validation once the row is committed."""

from __future__ import annotations

import pytest
from django.utils import timezone

from inventory import tasks
from inventory.models import Credential, InventoryUpload
from inventory.upload_jobs import start_upload

pytestmark = pytest.mark.django_db

PLUS = "minimax-token-plan-plus"


@pytest.fixture
def staff(make_user):
    return make_user("ops@example.com", is_staff=True, is_superuser=True)


def test_start_upload_queues_the_upload_id_after_commit(
    staff, monkeypatch, django_capture_on_commit_callbacks
):
    sent = []
    monkeypatch.setattr(tasks.process_upload, "delay", lambda *a, **k: sent.append((a, k)))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        upload = start_upload(
            plan_id=PLUS, text="sk-jobs-queued-0001::u", user=staff, now=timezone.now()
        )
    assert sent == []  # nothing leaves before the row is committed
    for callback in callbacks:
        callback()
    assert sent == [((upload.pk,), {})]


def test_start_upload_validates_and_stores_when_the_task_runs(
    staff, django_capture_on_commit_callbacks
):
    # Tasks run eagerly in tests: the queued task is the background validation itself.
    with django_capture_on_commit_callbacks(execute=True):
        upload = start_upload(
            plan_id=PLUS, text="sk-jobs-stored-0001::u", user=staff, now=timezone.now()
        )
    upload.refresh_from_db()
    assert upload.status == InventoryUpload.Status.STORED and upload.encrypted_payload == ""
    assert Credential.objects.filter(upload=upload).count() == 1


def test_start_upload_that_cannot_be_queued_is_rejected_and_erased(
    staff, monkeypatch, django_capture_on_commit_callbacks
):
    def broken(*args, **kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr(tasks.process_upload, "delay", broken)
    with django_capture_on_commit_callbacks(execute=True):
        upload = start_upload(
            plan_id=PLUS, text="sk-jobs-noqueue-001::u", user=staff, now=timezone.now()
        )
    upload.refresh_from_db()
    assert upload.status == InventoryUpload.Status.REJECTED and upload.encrypted_payload == ""
    assert "could not be started" in upload.message
