"""Deleting an account with a positive balance (SPEC M10): the confirmation names the amount
forfeited; deletion writes a `forfeited` ledger entry that brings the balance to zero."""

from __future__ import annotations

from django.test import Client
from django.utils import timezone

from accounts.services import delete_account
from adminops.models import AuditEvent
from billing.models import CreditAccount, LedgerEntry
from tests.billing.helpers import ledger_state

PASSWORD = "pw-Secret-123!"


def test_the_confirmation_names_the_balance_that_will_be_forfeited(make_user):
    user = make_user(credits_usd=100)
    page = Client()
    page.force_login(user)
    html = page.get("/account/delete/").content.decode()
    assert "your credit balance of $100.00 is forfeited" in html
    empty = make_user()
    page.force_login(empty)
    assert "nothing is forfeited" in page.get("/account/delete/").content.decode()


def test_deletion_writes_a_forfeited_entry_that_zeroes_the_balance(make_user):
    user = make_user(credits_usd=100)
    page = Client()
    page.force_login(user)
    response = page.post("/account/delete/", {"password": PASSWORD, "confirm": "on"})
    assert response.status_code == 302
    entry = LedgerEntry.objects.get(account__user=user, kind="forfeited")
    assert entry.amount_micros == -100_000_000
    assert entry.balance_after_micros == 0
    assert ledger_state(user)[:2] == (0, 0)  # balance == sum of entries == 0
    deleted = AuditEvent.objects.get(event_type="account.deleted", subject_id=str(user.pk))
    assert deleted.new_values["forfeited_micros"] == 100_000_000
    assert AuditEvent.objects.filter(event_type="credits.forfeited").exists()


def test_deleting_with_an_empty_balance_writes_no_entry_and_repeating_changes_nothing(make_user):
    user = make_user()
    delete_account(user=user, actor="system:test", now=timezone.now())
    delete_account(user=user, actor="system:test", now=timezone.now())
    assert not LedgerEntry.objects.filter(kind="forfeited").exists()
    assert CreditAccount.objects.get(user=user).balance_micros == 0


def test_the_admin_confirmation_names_the_amount(make_user):
    user = make_user(credits_usd=42)
    staff = Client()
    staff.force_login(make_user(is_staff=True, is_superuser=True))
    html = staff.get(f"/admin/accounts/user/{user.pk}/delete-account/").content.decode()
    assert "the balance of $42.00 goes to zero" in html
