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
from accounts.services import delete_account
from accounts.tokens import create_api_token
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


# -- who may delete whom: one policy for the admin, the page and the command (issue 13 item 10) --


def _audit_actor(user: User) -> str:
    return AuditEvent.objects.get(event_type="account.deleted", subject_id=str(user.pk)).actor


@pytest.mark.parametrize("flags", [{"is_staff": True}, {"is_staff": True, "is_superuser": True}])
def test_delete_account_command_refuses_staff_without_allow_staff(make_user, flags):
    # SPEC 11.2 `delete_account EMAIL [--allow-staff]`: a staff or superuser account is deleted
    # only on purpose; otherwise a non-zero exit, a clear message, and nothing changes (D1).
    staff = make_user("ops@example.com", **flags)
    token = create_api_token(user=staff, now=timezone.now()).plaintext
    with pytest.raises(CommandError, match="--allow-staff"):
        call_command("delete_account", "ops@example.com", stdout=StringIO())
    staff.refresh_from_db()
    assert staff.deleted_at is None and staff.is_active and staff.email == "ops@example.com"
    assert staff.is_staff == flags["is_staff"]
    assert staff.is_superuser == flags.get("is_superuser", False)
    assert not AuditEvent.objects.filter(event_type="account.deleted").exists()
    api = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert api.get("/api/v1/credits").status_code == 200

    call_command("delete_account", "ops@example.com", "--allow-staff", stdout=StringIO())
    staff.refresh_from_db()
    assert staff.deleted_at is not None and not staff.is_staff and not staff.is_superuser
    assert _audit_actor(staff) == "system:command"


def test_delete_account_command_records_the_named_staff_actor(make_user):
    # SPEC O1: the audit event names who deleted the account; --actor is an existing staff user.
    operator = make_user("operator@example.com", is_staff=True)
    customer = make_user("leaving@example.com")
    args = ("leaving@example.com", "--actor", "Operator@Example.com")
    call_command("delete_account", *args, stdout=StringIO())
    customer.refresh_from_db()
    assert customer.deleted_at is not None
    assert _audit_actor(customer) == f"staff:{operator.pk}"


@pytest.mark.parametrize("actor", ["nobody@example.com", "plain@example.com", "gone@example.com"])
def test_delete_account_command_refuses_an_actor_who_is_not_staff(make_user, actor):
    make_user("plain@example.com")
    gone = make_user("gone@example.com", is_staff=True)
    gone.is_active = False
    gone.save(update_fields=["is_active"])
    customer = make_user("stays@example.com")
    with pytest.raises(CommandError) as refused:
        call_command("delete_account", "stays@example.com", "--actor", actor, stdout=StringIO())
    assert actor in str(refused.value) and "staff member" in str(refused.value)
    customer.refresh_from_db()
    assert customer.deleted_at is None and customer.is_active
    assert not AuditEvent.objects.filter(event_type="account.deleted").exists()


def test_staff_cannot_delete_their_own_account_on_the_self_service_page(make_user):
    # SPEC D1 with the admin's rule: a staff account is deleted by a superuser in the admin,
    # not from the customer page (the one policy, accounts.services.deletion_refusal).
    staff = make_user("helper@example.com", is_staff=True)
    client = Client()
    client.force_login(staff)
    page = client.get("/account/delete/").content.decode()
    assert "A staff account cannot be deleted here" in page
    assert 'name="password"' not in page
    r = client.post("/account/delete/", {"password": PASSWORD, "confirm": "on"})
    assert r.status_code == 400
    staff.refresh_from_db()
    assert staff.deleted_at is None and staff.is_active


def test_every_way_in_asks_the_one_deletion_policy():
    # The admin action, the self-service page and the command call the same function.
    import inspect

    from accounts import admin as accounts_admin
    from accounts import views as accounts_views
    from accounts.management.commands import delete_account as command

    for module in (accounts_admin, accounts_views, command):
        assert "deletion_refusal(" in inspect.getsource(module), module.__name__
