"""Operator commands: create_user, create_api_token, seed_demo (SPEC 11.2)."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command, execute_from_command_line
from django.core.management.base import CommandError
from django.test import Client

from accounts.models import ApiToken, User
from adminops.models import AuditEvent
from billing.models import CreditAccount, LedgerEntry

pytestmark = pytest.mark.django_db


def run(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_create_user_with_password_can_log_in():
    out = run("create_user", "Ops.Person@Example.com", "--password", "pw-Secret-123!")
    user = User.objects.get()
    assert user.email == "ops.person@example.com"
    assert user.email in out
    assert not user.is_staff and not user.is_superuser
    assert CreditAccount.objects.get(user=user).balance_micros == 0
    client = Client()
    client.post("/accounts/login/", {"username": user.email, "password": "pw-Secret-123!"})
    assert client.get("/credits/").status_code == 200
    # SPEC O1: audited with the command as actor.
    assert AuditEvent.objects.get(event_type="user.created").actor == "system:command"


def test_create_user_without_password_has_no_usable_password():
    run("create_user", "nopw@example.com")
    assert not User.objects.get().has_usable_password()


def test_create_user_staff_flag():
    run("create_user", "staff@example.com", "--staff")
    user = User.objects.get()
    assert user.is_staff and not user.is_superuser


def test_create_user_superuser_flag_implies_staff():
    run("create_user", "root@example.com", "--superuser", "--password", "pw-Secret-123!")
    user = User.objects.get()
    assert user.is_staff and user.is_superuser


def test_create_user_with_taken_email_fails(customer):
    # SPEC 11.2: non-zero exit and a clear message; e-mails are unique case-insensitively.
    with pytest.raises(CommandError, match="already exists"):
        run("create_user", "CUSTOMER@example.com")
    assert User.objects.count() == 1


@pytest.mark.parametrize("email", ["not-an-email", "", "a@b@c"])
def test_create_user_with_invalid_email_fails(email):
    with pytest.raises(CommandError, match="valid e-mail"):
        run("create_user", email)
    assert not User.objects.exists()


def test_create_user_failure_exits_non_zero(customer, capsys):
    with pytest.raises(SystemExit) as exit_info:
        execute_from_command_line(["manage.py", "create_user", "customer@example.com"])
    assert exit_info.value.code == 1
    assert "already exists" in capsys.readouterr().err


def test_create_api_token_prints_only_a_working_token(customer):
    # SPEC 11.2: prints only the token on stdout.
    out = run("create_api_token", "Customer@Example.com")
    lines = out.splitlines()
    assert len(lines) == 1
    token = lines[0]
    assert token.startswith("cp_") and token == token.strip() and " " not in token
    r = Client(HTTP_AUTHORIZATION=f"Bearer {token}").get("/api/v1/credits")
    assert r.status_code == 200
    assert r.json()["balance_usd"] == "100.00"
    stored = ApiToken.objects.get(user=customer)
    assert stored.token_hash != token and token not in stored.token_hash
    # An operator made it: the audit trail says so, not the customer (SPEC O1).
    assert AuditEvent.objects.get(event_type="api_token.created").actor == "system:command"


def test_create_api_token_twice_gives_two_different_tokens(customer):
    first, second = (
        run("create_api_token", "customer@example.com"),
        run("create_api_token", "customer@example.com"),
    )
    assert first != second
    assert ApiToken.objects.filter(user=customer).count() == 2


def test_create_api_token_for_unknown_email_fails(customer):
    with pytest.raises(CommandError, match="No active user"):
        run("create_api_token", "nobody@example.com")
    assert not ApiToken.objects.exists()


def test_create_api_token_for_deactivated_user_fails(customer):
    customer.is_active = False
    customer.save(update_fields=["is_active"])
    with pytest.raises(CommandError):
        run("create_api_token", "customer@example.com")
    assert not ApiToken.objects.exists()


def test_create_api_token_failure_exits_non_zero(db, capsys):
    with pytest.raises(SystemExit) as exit_info:
        execute_from_command_line(["manage.py", "create_api_token", "nobody@example.com"])
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert "No active user" in captured.err
    assert captured.out == ""


def test_seed_demo_is_idempotent():
    first = run("seed_demo")
    run("seed_demo")
    assert "demo@example.com" in first
    demo = User.objects.get(email="demo@example.com")
    staff = User.objects.get(email="staff@example.com")
    assert User.objects.count() == 2
    assert staff.is_staff and staff.is_superuser and not demo.is_staff
    assert CreditAccount.objects.get(user=demo).balance_micros == 100_000_000
    entries = LedgerEntry.objects.filter(account__user=demo)
    assert [(e.kind, e.amount_micros) for e in entries] == [("grant", 100_000_000)]
    client = Client()
    client.post(
        "/accounts/login/", {"username": "demo@example.com", "password": "demo-password-123"}
    )
    assert client.get("/api/v1/credits").json()["balance_usd"] == "100.00"
