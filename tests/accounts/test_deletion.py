"""Account deletion, as far as the accounts app goes: identity, tokens, sessions (SPEC D1).

Subscription, BYOK and credential effects are covered with the lifecycle tests.
"""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.utils import timezone

from accounts.models import ApiToken, User
from accounts.services import create_api_token, delete_account
from adminops.models import AuditEvent
from billing.models import CreditAccount, LedgerEntry

pytestmark = pytest.mark.django_db

PASSWORD = "pw-Secret-123!"


def test_deletion_stops_tokens_and_every_session_at_once(customer):
    # SPEC D1: API tokens and sessions stop working at once (401).
    token = create_api_token(user=customer, now=timezone.now()).plaintext
    api = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    browser = Client()
    browser.force_login(customer)
    assert api.get("/api/v1/credits").status_code == 200
    assert browser.get("/api/v1/credits").status_code == 200

    delete_account(user=customer, actor="system:test", now=timezone.now())

    assert api.get("/api/v1/credits").status_code == 401
    assert browser.get("/api/v1/credits").status_code == 401
    assert browser.get("/credits/").status_code == 302
    assert not ApiToken.objects.filter(user=customer, revoked_at__isnull=True).exists()


def test_deleted_user_cannot_log_in_with_the_old_password(customer):
    delete_account(user=customer, actor="system:test", now=timezone.now())
    client = Client()
    r = client.post("/accounts/login/", {"username": "customer@example.com", "password": PASSWORD})
    assert r.status_code == 200
    assert "_auth_user_id" not in client.session


def test_deletion_erases_personal_data_and_keeps_financial_records(make_user):
    # SPEC D1: e-mail and name erased or anonymized; records may stay with the anonymized user.
    user = make_user("Private.Person@example.com", credits_usd=40, full_name="Private Person")
    delete_account(user=user, actor="system:test", now=timezone.now())
    user.refresh_from_db()
    assert "private" not in user.email.lower()
    assert user.full_name == ""
    assert not user.is_active and not user.has_usable_password()
    assert user.deleted_at is not None
    assert CreditAccount.objects.filter(user=user).exists()
    # The grant stays, and SPEC M10's `forfeited` entry brings the balance to zero.
    kinds = LedgerEntry.objects.filter(account__user=user).order_by("id")
    assert list(kinds.values_list("kind", flat=True)) == ["grant", "forfeited"]
    # SPEC O1: the audit event carries no personal data.
    event = AuditEvent.objects.get(event_type="account.deleted")
    assert "private" not in f"{event.old_values} {event.new_values}".lower()


def test_email_of_a_deleted_account_can_sign_up_again(customer):
    # SPEC D1: the e-mail address can be used for a new sign-up.
    delete_account(user=customer, actor="system:test", now=timezone.now())
    client = Client()
    r = client.post(
        "/accounts/signup/",
        {"email": "Customer@Example.com", "full_name": "", "password": "another-Secret-456"},
    )
    assert r.status_code == 302, r.content
    fresh = User.objects.get(email="customer@example.com")
    assert fresh.pk != customer.pk
    # The new account starts from zero: nothing of the old one carries over.
    assert client.get("/api/v1/credits").json()["balance_usd"] == "0.00"


def test_deleting_twice_changes_nothing_more(customer):
    delete_account(user=customer, actor="system:test", now=timezone.now())
    customer.refresh_from_db()
    email = customer.email
    delete_account(user=customer, actor="system:test", now=timezone.now())
    customer.refresh_from_db()
    assert customer.email == email
    assert AuditEvent.objects.filter(event_type="account.deleted").count() == 1


def test_delete_account_command(customer):
    # SPEC 11.2: delete_account EMAIL.
    out = StringIO()
    call_command("delete_account", "CUSTOMER@example.com", stdout=out)
    customer.refresh_from_db()
    assert not customer.is_active and customer.deleted_at is not None
    with pytest.raises(CommandError):  # the address is gone now
        call_command("delete_account", "customer@example.com")


def test_delete_account_command_for_unknown_email_fails(customer):
    with pytest.raises(CommandError):
        call_command("delete_account", "nobody@example.com")
    customer.refresh_from_db()
    assert customer.is_active
