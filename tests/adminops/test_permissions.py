"""Staff pages need staff and the right permission (SPEC S2)."""

from __future__ import annotations

import pytest
from django.test import Client
from django.utils import timezone

from inventory import upload_jobs
from inventory.models import InventoryUpload
from tests.adminops.conftest import (
    CHANGELIST_URL,
    PLUS,
    QUEUE_URL,
    UPLOAD_URL,
    record_url,
    status_url,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def pages(queue_item, superuser):
    item = queue_item(PLUS)
    upload = upload_jobs.start_upload(
        plan_id=PLUS, text="sk-perm-000001::u", user=superuser, now=timezone.now()
    )
    return {
        "upload": UPLOAD_URL,
        "status": status_url(upload.pk),
        "queue": QUEUE_URL,
        "record": record_url(item.pk),
        "changelist": CHANGELIST_URL,
        "audit": "/admin/adminops/auditevent/",
    }


def test_anonymous_and_customers_are_sent_to_the_admin_login(pages, make_user, client_for):
    customer = client_for(make_user())
    for client in (Client(), customer):
        for url in pages.values():
            page = client.get(url)
            assert page.status_code == 302, url
            assert page["Location"].startswith("/admin/login/?next="), url
    assert (
        customer.post(UPLOAD_URL, {"plan_id": PLUS, "lines": "sk-nope-00000001::u"}).status_code
        == 302
    )
    assert InventoryUpload.objects.count() == 1


def test_staff_without_permissions_are_refused(pages, make_staff, client_for):
    client = client_for(make_staff())
    for name, url in pages.items():
        assert client.get(url).status_code == 403, name
    assert (
        client.post(UPLOAD_URL, {"plan_id": PLUS, "lines": "sk-nope-00000001::u"}).status_code
        == 403
    )
    assert client.post(pages["record"], {"outcome": "revoked", "confirm": "yes"}).status_code == 403
    assert InventoryUpload.objects.count() == 1


def test_upload_permission_opens_upload_and_status_only(pages, make_staff, client_for):
    client = client_for(make_staff("inventory.upload_credentials"))
    assert client.get(pages["upload"]).status_code == 200
    assert client.get(pages["status"]).status_code == 200
    changelist = client.get(pages["changelist"])
    assert changelist.status_code == 200
    assert UPLOAD_URL in changelist.content.decode()
    assert QUEUE_URL not in changelist.content.decode()
    assert client.get(pages["queue"]).status_code == 403
    assert client.get(pages["record"]).status_code == 403


def test_revocation_permission_opens_queue_only(pages, make_staff, client_for):
    client = client_for(make_staff("inventory.record_revocation"))
    assert client.get(pages["queue"]).status_code == 200
    assert client.get(pages["record"]).status_code == 200
    assert client.get(pages["upload"]).status_code == 403
    assert client.get(pages["status"]).status_code == 403
    changelist = client.get(pages["changelist"]).content.decode()
    assert QUEUE_URL in changelist and UPLOAD_URL not in changelist


def test_view_permission_reads_the_inventory_but_changes_nothing(pages, make_staff, client_for):
    client = client_for(make_staff("inventory.view_credential"))
    html = client.get(pages["changelist"]).content.decode()
    assert "inventory-dashboard" in html and UPLOAD_URL not in html
    assert client.get(pages["upload"]).status_code == 403
    assert client.get(pages["queue"]).status_code == 403


def test_upload_post_needs_csrf(make_staff):
    client = Client(enforce_csrf_checks=True)
    client.force_login(make_staff("inventory.upload_credentials"))
    page = client.post(UPLOAD_URL, {"plan_id": PLUS, "lines": "sk-csrf-00000001::u"})
    assert page.status_code == 403
    assert InventoryUpload.objects.count() == 0
