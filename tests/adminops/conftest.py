"""Fixtures for the operators' admin: staff with and without permissions, credentials in every
state, and uploads through the admin form with the background task run eagerly."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.db import transaction
from django.test import Client
from django.utils import timezone

from accounts.models import User
from codingplans import crypto
from inventory.models import Credential
from inventory.services import request_revocation

UPLOAD_URL = "/admin/inventory/credential/upload/"
QUEUE_URL = "/admin/inventory/credential/revocation-queue/"
CHANGELIST_URL = "/admin/inventory/credential/"
PLUS = "minimax-token-plan-plus"
MAX = "minimax-token-plan-max"
ULTRA = "minimax-token-plan-ultra"

_staff = itertools.count(1)


def status_url(upload_id: int) -> str:
    return f"/admin/inventory/inventoryupload/{upload_id}/status/"


def record_url(credential_id: int) -> str:
    return f"/admin/inventory/credential/{credential_id}/record-revocation/"


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    """Admin tests create many users; real password hashing would dominate their run time."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def make_staff(make_user):
    """A staff member holding exactly the given permissions ("app_label.codename")."""

    def make(*perms: str, superuser: bool = False) -> User:
        user = make_user(f"staff{next(_staff)}@example.com", is_staff=True, is_superuser=superuser)
        for perm in perms:
            app_label, codename = perm.split(".")
            user.user_permissions.add(
                Permission.objects.get(content_type__app_label=app_label, codename=codename)
            )
        return User.objects.get(pk=user.pk)  # fresh: no cached permissions

    return make


@pytest.fixture
def client_for():
    def make(user: User) -> Client:
        client = Client()
        client.force_login(user)
        return client

    return make


@pytest.fixture
def superuser(make_staff):
    return make_staff(superuser=True)


@pytest.fixture
def operator(superuser, client_for):
    """A logged-in superuser's admin client."""
    return client_for(superuser)


@pytest.fixture
def admin_upload(django_capture_on_commit_callbacks):
    """POST the admin upload form; the queued task runs eagerly once the request commits."""

    def post(client: Client, plan_id: str, text: str | None = None, file=None, follow=True):
        data: dict[str, object] = {"plan_id": plan_id}
        if text is not None:
            data["lines"] = text
        if file is not None:
            data["file"] = file
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post(UPLOAD_URL, data)
        if follow and response.status_code == 302:
            # The callbacks (the eager task) ran when the request's work committed.
            return client.get(response["Location"], follow=True)
        return response

    return post


def credential_for(key: str) -> Credential:
    return Credential.objects.get(fingerprint=crypto.fingerprint(key))


@pytest.fixture
def queue_item(stock):
    """A credential waiting for revocation, requested `minutes_ago` minutes ago."""

    def make(plan_id: str = PLUS, *, minutes_ago: int = 0) -> Credential:
        (key,) = stock(plan_id, 1)
        credential = credential_for(key)
        now = timezone.now()
        Credential.objects.filter(pk=credential.pk).update(
            state=Credential.State.ASSIGNED, assigned_at=now - timedelta(days=1)
        )
        credential.refresh_from_db()
        with transaction.atomic():
            request_revocation(
                credential=credential,
                actor="system:test",
                now=now - timedelta(minutes=minutes_ago),
            )
        credential.refresh_from_db()
        return credential

    return make
