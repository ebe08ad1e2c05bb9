"""Auto top-up attempts recorded in the ledger with their outcome (SPEC L4, S5)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from billing.models import CreditAccount, LedgerEntry, TopUpAttempt
from billing.services import execute_top_up, set_auto_top_up, start_top_up
from tests.billing.helpers import ledger_state

pytestmark = pytest.mark.django_db

MICROS = 1_000_000


@pytest.fixture
def account(customer):
    set_auto_top_up(
        user=customer,
        enabled=True,
        amount_micros=25 * MICROS,
        actor="system:test",
        now=timezone.now(),
    )
    return CreditAccount.objects.get(user=customer)


def start(account, django_capture_on_commit_callbacks, *, due_at=None, subscription_id=1):
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        return start_top_up(
            account=account,
            subscription_id=subscription_id,
            due_at=due_at or timezone.now(),
            now=timezone.now(),
        )


def test_approved_top_up_credits_the_account_after_commit(
    account, customer, django_capture_on_commit_callbacks, settings
):
    # SPEC S5: an approved attempt credits the account with a `top_up` entry.
    settings.CODING_PLANS_TOP_UP_BACKEND = "simulated-approve"
    attempt = start(account, django_capture_on_commit_callbacks)
    attempt.refresh_from_db()
    assert attempt.status == TopUpAttempt.Status.APPROVED
    entry = attempt.ledger_entry
    assert (entry.kind, entry.amount_micros, entry.balance_after_micros) == (
        "top_up",
        25 * MICROS,
        125 * MICROS,
    )
    balance, total, last, _ = ledger_state(customer)
    assert balance == total == last == 125 * MICROS


def test_declined_top_up_is_recorded_and_changes_no_balance(
    account, customer, django_capture_on_commit_callbacks, settings
):
    # SPEC S5: a declined attempt is recorded in the ledger and changes no balance.
    settings.CODING_PLANS_TOP_UP_BACKEND = "simulated-decline"
    attempt = start(account, django_capture_on_commit_callbacks)
    attempt.refresh_from_db()
    assert attempt.status == TopUpAttempt.Status.DECLINED
    entry = attempt.ledger_entry
    assert (entry.kind, entry.amount_micros, entry.balance_after_micros) == (
        "top_up_declined",
        0,
        100 * MICROS,
    )
    assert "declined" in entry.reason
    balance, total, last, _ = ledger_state(customer)
    assert balance == total == last == 100 * MICROS


def test_repeating_a_resolved_top_up_does_nothing(
    account, customer, django_capture_on_commit_callbacks
):
    # DESIGN: side effects after commit must be safe to repeat.
    attempt = start(account, django_capture_on_commit_callbacks)
    before = ledger_state(customer)
    execute_top_up(attempt_id=attempt.pk, now=timezone.now())
    assert ledger_state(customer) == before


def test_one_attempt_per_due_term(account, customer, django_capture_on_commit_callbacks):
    # SPEC L4: at most one top-up attempt for a due term, however many sweeps run.
    due = timezone.now()
    assert start(account, django_capture_on_commit_callbacks, due_at=due) is not None
    assert start(account, django_capture_on_commit_callbacks, due_at=due) is None
    assert TopUpAttempt.objects.count() == 1
    assert LedgerEntry.objects.filter(account=account, kind="top_up").count() == 1
    # The next term is a new one.
    later = due + timedelta(days=30)
    assert start(account, django_capture_on_commit_callbacks, due_at=later) is not None
    assert ledger_state(customer)[0] == 150 * MICROS
