"""`grant_credits EMAIL AMOUNT_USD [--reason TEXT]` (SPEC 11.2)."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command, execute_from_command_line
from django.core.management.base import CommandError

from adminops.models import AuditEvent
from billing.models import CreditAccount, LedgerEntry

pytestmark = pytest.mark.django_db


def grant(*args) -> str:
    out = StringIO()
    call_command("grant_credits", *args, stdout=out)
    return out.getvalue()


def balance_of(user) -> int:
    return CreditAccount.objects.get(user=user).balance_micros


def test_grant_credits_writes_a_grant_ledger_entry(make_user):
    # SPEC 11.2: a ledger entry, not a bare balance edit.
    user = make_user("ops@example.com")
    out = grant("ops@example.com", "12.50", "--reason", "Support goodwill")
    assert "$12.50" in out and "ops@example.com" in out
    entry = LedgerEntry.objects.get(account__user=user)
    assert entry.kind == LedgerEntry.Kind.GRANT
    assert entry.amount_micros == entry.balance_after_micros == 12_500_000
    assert entry.reason == "Support goodwill"
    assert entry.actor == "system:command"
    assert balance_of(user) == 12_500_000
    # SPEC O1: the state change is audited.
    assert AuditEvent.objects.filter(event_type="credits.granted", actor="system:command").exists()


def test_grant_credits_adds_to_an_existing_balance_with_default_reason(make_user):
    user = make_user("topped@example.com", credits_usd=100)
    out = grant("TOPPED@example.com", "5")  # e-mail matched case-insensitively
    assert "balance $105.00" in out
    entry = LedgerEntry.objects.filter(account__user=user).order_by("-id").first()
    assert (entry.amount_micros, entry.balance_after_micros) == (5_000_000, 105_000_000)
    assert entry.reason == "Operator grant"
    assert balance_of(user) == 105_000_000


@pytest.mark.parametrize(
    "amount", ["abc", "-5", "0", "0.00", "1.005", "0.000001", "NaN", "Infinity", "", "1000000.01"]
)
def test_grant_credits_with_bad_amount_fails_and_changes_nothing(make_user, amount):
    # SPEC 11.2: non-zero exit and a clear message; no ledger entry.
    user = make_user("bad@example.com", credits_usd=10)
    with pytest.raises(CommandError, match="Invalid amount"):
        grant("bad@example.com", amount)
    assert balance_of(user) == 10_000_000
    assert LedgerEntry.objects.filter(account__user=user).count() == 1


def test_grant_credits_to_unknown_email_fails(make_user):
    make_user("known@example.com")
    with pytest.raises(CommandError, match="No active user"):
        grant("nobody@example.com", "10")
    assert not LedgerEntry.objects.exists()


def test_grant_credits_to_deactivated_user_fails(make_user):
    user = make_user("gone@example.com")
    user.is_active = False
    user.save(update_fields=["is_active"])
    with pytest.raises(CommandError):
        grant("gone@example.com", "10")
    assert balance_of(user) == 0


def test_grant_credits_failure_exits_non_zero(make_user, capsys):
    # SPEC 11.2: run as from a shell, a failure exits with status 1 and a message on stderr.
    with pytest.raises(SystemExit) as exit_info:
        execute_from_command_line(["manage.py", "grant_credits", "nobody@example.com", "10"])
    assert exit_info.value.code == 1
    assert "No active user" in capsys.readouterr().err
