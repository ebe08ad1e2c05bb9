"""The auto top-up processor is called with no row lock held, and its outcome is recorded
idempotently (SPEC L4, S5, M4; DESIGN "Transactions and locks"; issue 13 item 8).

Real threads on real PostgreSQL (`transaction=True`): the sweep's recording step commits for real
and the processor call then runs in that thread, held in flight by a gated backend, while the
main thread buys a plan for the same customer.
"""

from __future__ import annotations

import threading

import pytest
from django.db import connection, transaction
from django.utils import timezone

from billing.models import CreditAccount, LedgerEntry, TopUpAttempt
from billing.services import record_top_up_outcome, set_auto_top_up, start_top_up
from billing.topup import BACKENDS, ChargeResult
from subscriptions.models import Subscription
from subscriptions.purchase import purchase_plan
from tests.billing.helpers import ledger_state

pytestmark = pytest.mark.django_db(transaction=True)

MICROS = 1_000_000
TIMEOUT = 15


class GatedProcessor:
    """A real backend whose charge stays in flight until the test lets it answer (approved)."""

    name = "test-gated"
    entered = threading.Event()
    release = threading.Event()

    def charge(self, *, attempt_id: int, user_id: int, amount_micros: int) -> ChargeResult:
        type(self).entered.set()
        assert type(self).release.wait(TIMEOUT), "the test never released the processor"
        return ChargeResult(approved=True, reference=f"gated-{attempt_id}")


@pytest.fixture
def gated(monkeypatch, settings):
    GatedProcessor.entered = threading.Event()
    GatedProcessor.release = threading.Event()
    monkeypatch.setitem(BACKENDS, GatedProcessor.name, GatedProcessor)  # the plug-in point
    settings.CODING_PLANS_TOP_UP_BACKEND = GatedProcessor.name
    yield GatedProcessor
    GatedProcessor.release.set()


def test_purchase_for_the_same_customer_completes_while_the_processor_is_in_flight(
    customer, stock, gated
):
    # DESIGN: a call to an outside service never runs while a row lock is held (M4).
    stock("minimax-token-plan-plus")
    now = timezone.now()
    set_auto_top_up(user=customer, enabled=True, amount_micros=25 * MICROS, actor="t", now=now)
    account = CreditAccount.objects.get(user=customer)
    errors: list[BaseException] = []

    def sweep_step() -> None:
        # What the sweep does: record the attempt in its transaction; the charge runs after
        # the commit, here in the same thread.
        try:
            with transaction.atomic(durable=True):
                start_top_up(account=account, subscription_id=999, due_at=now, now=now)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=sweep_step, daemon=True)
    thread.start()
    try:
        assert gated.entered.wait(TIMEOUT), "the processor was never called"
        attempt = TopUpAttempt.objects.get()
        assert attempt.status == TopUpAttempt.Status.PENDING  # committed, charge in flight
        with connection.cursor() as cursor:  # a held lock fails the purchase, not hangs it
            cursor.execute("SET lock_timeout = '3s'")
        try:
            outcome = purchase_plan(
                user=customer, plan_id="minimax-token-plan-plus", idempotency_key="k1", now=now
            )
        finally:
            with connection.cursor() as cursor:
                cursor.execute("RESET lock_timeout")
        assert outcome.status == 201
        attempt.refresh_from_db()
        assert attempt.status == TopUpAttempt.Status.PENDING  # still in flight
    finally:
        gated.release.set()
        thread.join(TIMEOUT)
    assert not thread.is_alive() and errors == []
    attempt.refresh_from_db()
    assert attempt.status == TopUpAttempt.Status.APPROVED
    assert Subscription.objects.filter(user=customer).count() == 1
    # $100 granted, $20 purchase, $25 top-up; balance, ledger sum and last entry agree (S5).
    assert ledger_state(customer)[:3] == (105 * MICROS,) * 3


def test_recording_an_approved_outcome_twice_or_at_once_grants_once(customer, settings):
    # SPEC S5, M4: the outcome is recorded idempotently on the attempt: one `top_up` entry.
    settings.CODING_PLANS_TOP_UP_BACKEND = "simulated-approve"
    now = timezone.now()
    set_auto_top_up(user=customer, enabled=True, amount_micros=25 * MICROS, actor="t", now=now)
    account = CreditAccount.objects.get(user=customer)
    with transaction.atomic(durable=True):
        attempt = TopUpAttempt.objects.create(
            account=account,
            subscription_id=1,
            due_at=now,
            amount_micros=25 * MICROS,
            backend="simulated-approve",
            created_at=now,
        )  # recorded, not yet charged
    approved = ChargeResult(approved=True, reference=f"sim-{attempt.pk}")
    barrier = threading.Barrier(3)
    results: list[object] = []

    def record() -> None:
        try:
            barrier.wait(TIMEOUT)
            results.append(record_top_up_outcome(attempt_id=attempt.pk, result=approved, now=now))
        except BaseException as exc:
            results.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=record) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert sorted(results, key=str) == [False, False, True]
    # and once more, later: still settled, nothing granted
    assert record_top_up_outcome(attempt_id=attempt.pk, result=approved, now=now) is False
    declined = ChargeResult(approved=False, decline_reason="card_declined")
    assert record_top_up_outcome(attempt_id=attempt.pk, result=declined, now=now) is False
    attempt.refresh_from_db()
    assert attempt.status == TopUpAttempt.Status.APPROVED
    assert LedgerEntry.objects.filter(kind="top_up").count() == 1
    assert LedgerEntry.objects.filter(kind="top_up_declined").count() == 0
    assert ledger_state(customer)[:3] == (125 * MICROS,) * 3
