"""Abandoned admin uploads do not keep their encrypted payload (SPEC I5, S1; issue 13 item 11):
an upload still `pending` 24 hours after it was started is purged -- payload erased, status
`expired` -- by an hourly beat task, and can no longer be processed."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone

from accounts.models import User
from codingplans.celery import app as celery_app
from inventory.errors import UploadExpired
from inventory.models import Credential, InventoryUpload
from inventory.tasks import process_upload as process_upload_task
from inventory.upload_jobs import process_upload, purge_abandoned_uploads, start_upload

pytestmark = pytest.mark.django_db

PLUS = "minimax-token-plan-plus"
TASK = "inventory.tasks.purge_abandoned_uploads"


@pytest.fixture
def staff(make_user):
    return make_user("ops@example.com", is_staff=True, is_superuser=True)


def _upload(staff, *, age: timedelta, n: int = 1) -> InventoryUpload:
    text = "\n".join(f"sk-purge-{i:06d}-abcdefgh::up-{i}" for i in range(n))
    return start_upload(plan_id=PLUS, text=text, user=staff, now=timezone.now() - age)


def test_pending_upload_older_than_24_hours_is_purged_and_a_recent_one_kept(staff):
    old = _upload(staff, age=timedelta(hours=25))
    recent = _upload(staff, age=timedelta(hours=23))
    assert purge_abandoned_uploads(now=timezone.now()) == 1
    old.refresh_from_db()
    recent.refresh_from_db()
    assert old.status == InventoryUpload.Status.EXPIRED
    assert old.encrypted_payload == "" and old.finished_at is not None
    assert "24 hours" in old.message
    assert recent.status == InventoryUpload.Status.PENDING and recent.encrypted_payload
    assert purge_abandoned_uploads(now=timezone.now()) == 0  # safe to repeat


def test_finished_uploads_are_not_touched(staff):
    done = _upload(staff, age=timedelta(days=3))
    process_upload(done.pk, timezone.now() - timedelta(days=3))
    done.refresh_from_db()
    status = done.status
    assert purge_abandoned_uploads(now=timezone.now()) == 0
    done.refresh_from_db()
    assert done.status == status


def test_purged_upload_cannot_be_processed_and_says_why(staff):
    old = _upload(staff, age=timedelta(hours=30))
    purge_abandoned_uploads(now=timezone.now())
    with pytest.raises(UploadExpired) as refused:
        process_upload(old.pk, timezone.now())
    assert refused.value.code == "upload_expired"
    assert "Upload the file again" in refused.value.message
    assert process_upload_task.delay(old.pk).get() == "expired"  # a late task: no error
    assert not Credential.objects.exists()
    client = Client()
    client.force_login(User.objects.get(pk=staff.pk))
    page = client.get(f"/admin/inventory/inventoryupload/{old.pk}/status/").content.decode()
    assert "Expired: nothing was stored." in page and "Upload the file again" in page


def test_beat_runs_the_purge_hourly():
    entries = [e for e in settings.CELERY_BEAT_SCHEDULE.values() if e["task"] == TASK]
    assert len(entries) == 1
    assert celery_app.conf.beat_schedule == settings.CELERY_BEAT_SCHEDULE
    assert TASK in celery_app.tasks
    celery_app.tasks[TASK].delay().get()  # runs through the task, as beat would send it
