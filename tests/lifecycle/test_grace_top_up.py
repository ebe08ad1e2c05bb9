"""Grace period and auto top-up (SPEC L4, S5) and the lifecycle e-mails.

On-commit work (the top-up charge, e-mails) never runs inside a test's wrapping transaction;
`django_capture_on_commit_callbacks(execute=True)` runs it when the sweep's transaction would
have committed — and, inside the block, shows it has not run yet.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from billing.models import LedgerEntry, TopUpAttempt
from billing.services import grant_credits, set_auto_top_up
from billing.topup import BACKENDS
from byok.models import ByokKey
from inventory.models import Credential
from subscriptions.models import ChargedTerm, Subscription
from subscriptions.sweep import GRACE_PERIOD, run_billing_sweep
from tests.lifecycle.helpers import MAX, MICROS, PLUS, balance, buy, ledger_sum

pytestmark = pytest.mark.django_db


@pytest.fixture
def t0():
    return timezone.now().replace(microsecond=0)


@pytest.fixture
def short_with_auto_top_up(make_user, stock, t0):
    """A Plus subscriber with $0 left and auto top-up of $25 on."""

    def make(amount_usd: int = 25, plan_id: str = PLUS, credits_usd: int = 20):
        stock(plan_id)
        user = make_user(credits_usd=credits_usd)
        set_auto_top_up(
            user=user, enabled=True, amount_micros=amount_usd * MICROS, actor="t", now=t0
        )
        return user, buy(user, t0, plan_id)

    return make


def test_declined_top_up_past_due_then_payment_failed_at_deadline(
    short_with_auto_top_up, settings, django_capture_on_commit_callbacks
):
    # SPEC L4, S5 (declined)
    settings.CODING_PLANS_TOP_UP_BACKEND = "simulated-decline"
    user, sub = short_with_auto_top_up()
    due = sub.current_period_end
    entry_id = ByokKey.objects.get(subscription=sub).pk

    with django_capture_on_commit_callbacks(execute=True):
        run = run_billing_sweep(now=due + timedelta(minutes=10))
        assert mail.outbox == []  # the past-due e-mail waits for the commit
    assert run.counts["past_due"] == 1 and run.counts["auto_top_up_triggered"] == 1
    sub.refresh_from_db()
    assert sub.status == Subscription.Status.PAST_DUE
    assert sub.grace_deadline == due + timedelta(hours=24)  # from the due time, not the sweep
    assert sub.current_period_end == due
    attempt = TopUpAttempt.objects.get()
    assert attempt.subscription_id == sub.pk and attempt.due_at == due
    assert attempt.status == TopUpAttempt.Status.DECLINED
    declined = LedgerEntry.objects.get(kind=LedgerEntry.Kind.TOP_UP_DECLINED)
    assert declined.amount_micros == 0 and declined.reference == f"top_up:{attempt.pk}"
    assert attempt.ledger_entry_id == declined.pk
    assert balance(user) == 0 == ledger_sum(user)  # a declined attempt changes no balance
    assert len(mail.outbox) == 1 and "Payment needed" in mail.outbox[0].subject
    assert ByokKey.objects.filter(pk=entry_id).exists()  # access continues during grace

    # Repeated sweeps during grace: no second attempt for the same due term (L4).
    for hours in (1, 6, 23):
        with django_capture_on_commit_callbacks(execute=True):
            again = run_billing_sweep(now=due + timedelta(hours=hours))
        assert again.counts == dict.fromkeys(again.counts, 0)
    with django_capture_on_commit_callbacks(execute=True):
        just_before = run_billing_sweep(now=sub.grace_deadline - timedelta(microseconds=1))
    assert just_before.counts["terminated"] == 0
    assert TopUpAttempt.objects.count() == 1
    assert LedgerEntry.objects.filter(kind=LedgerEntry.Kind.TOP_UP_DECLINED).count() == 1
    assert len(mail.outbox) == 1

    # At the deadline without funds: terminate as in L3, reason payment_failed.
    with django_capture_on_commit_callbacks(execute=True):
        end = run_billing_sweep(now=sub.grace_deadline)
    assert end.counts["terminated"] == 1 and end.counts["auto_top_up_triggered"] == 0
    sub.refresh_from_db()
    assert sub.status == "canceled" and sub.cancellation_reason == "payment_failed"
    assert not ByokKey.objects.filter(pk=entry_id).exists()
    credential = Credential.objects.get(pk=sub.credential_id)
    assert credential.state == "revocation_pending" and credential.encrypted_key == ""
    assert len(mail.outbox) == 2 and "ended" in mail.outbox[1].subject
    assert ChargedTerm.objects.filter(subscription=sub).count() == 1


def test_approved_top_up_credits_after_commit_and_next_sweep_renews_from_old_end(
    short_with_auto_top_up, settings, django_capture_on_commit_callbacks
):
    # SPEC L4, S5 (approved): the top-up credits the account after the sweep's transaction
    # commits; the renewal happens in a later sweep, the new period starting at the old end.
    settings.CODING_PLANS_TOP_UP_BACKEND = "simulated-approve"
    user, sub = short_with_auto_top_up(amount_usd=25)
    due = sub.current_period_end

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        run = run_billing_sweep(now=due)
        # Still inside the sweep's (test) transaction: nothing credited yet.
        assert not LedgerEntry.objects.filter(kind="top_up").exists()
        assert TopUpAttempt.objects.get().status == TopUpAttempt.Status.PENDING
    assert run.counts["past_due"] == 1 and run.counts["auto_top_up_triggered"] == 1
    assert run.counts["renewed"] == 0  # not in the same sweep
    assert callbacks  # the charge ran as an on-commit callback
    top_up = LedgerEntry.objects.get(kind=LedgerEntry.Kind.TOP_UP)
    assert top_up.amount_micros == 25 * MICROS
    assert TopUpAttempt.objects.get().status == TopUpAttempt.Status.APPROVED
    assert balance(user) == 25 * MICROS == ledger_sum(user)
    sub.refresh_from_db()
    assert sub.status == "past_due"

    with django_capture_on_commit_callbacks(execute=True):
        nxt = run_billing_sweep(now=due + timedelta(hours=1))
    assert nxt.counts["renewed"] == 1 and nxt.counts["auto_top_up_triggered"] == 0
    sub.refresh_from_db()
    assert sub.status == "active" and sub.grace_deadline is None
    assert sub.current_period_start == due  # not the time of the sweep that renewed
    assert sub.current_period_end == due + timedelta(days=30)
    assert balance(user) == 5 * MICROS == ledger_sum(user)
    assert LedgerEntry.objects.filter(kind="renewal").count() == 1  # one debit
    assert TopUpAttempt.objects.count() == 1


def test_credits_granted_during_grace_renew_at_next_sweep(
    short_with_auto_top_up, settings, t0, django_capture_on_commit_callbacks
):
    # SPEC L4: any sweep before the deadline that finds enough credits renews.
    settings.CODING_PLANS_TOP_UP_BACKEND = "simulated-decline"
    user, sub = short_with_auto_top_up()
    due = sub.current_period_end
    with django_capture_on_commit_callbacks(execute=True):
        run_billing_sweep(now=due)
    grant_credits(user=user, amount_micros=20 * MICROS, actor="staff:1", now=due)
    with django_capture_on_commit_callbacks(execute=True):
        run = run_billing_sweep(now=due + timedelta(hours=23, minutes=59))
    assert run.counts["renewed"] == 1
    sub.refresh_from_db()
    assert (sub.status, sub.current_period_start) == ("active", due)


def test_top_up_amount_covers_the_shortfall_rounded_up_to_whole_dollars(
    short_with_auto_top_up, settings, django_capture_on_commit_callbacks
):
    # SPEC M4: max(configured amount, shortfall for the due renewal), rounded up to whole
    # dollars: a $50 Max renewal with $0 left and a $10 setting charges $50.
    settings.CODING_PLANS_TOP_UP_BACKEND = "simulated-approve"
    user, sub = short_with_auto_top_up(amount_usd=10, plan_id=MAX, credits_usd=50)
    due = sub.current_period_end
    with django_capture_on_commit_callbacks(execute=True):
        run_billing_sweep(now=due)
    assert TopUpAttempt.objects.get().amount_micros == 50 * MICROS
    assert balance(user) == 50 * MICROS == ledger_sum(user)


def test_top_up_no_longer_enough_for_the_price_ends_at_deadline(
    short_with_auto_top_up, settings, django_capture_on_commit_callbacks
):
    # SPEC L4: one attempt per due term; an approved top-up that no longer covers the price
    # (the credits were taken away in between) is not retried.
    from billing.services import adjust_credits

    settings.CODING_PLANS_TOP_UP_BACKEND = "simulated-approve"
    user, sub = short_with_auto_top_up(amount_usd=10, plan_id=MAX, credits_usd=50)
    due = sub.current_period_end
    with django_capture_on_commit_callbacks(execute=True):
        run_billing_sweep(now=due)
    adjust_credits(user=user, amount_micros=-40 * MICROS, reason="test", actor="staff:1", now=due)
    with django_capture_on_commit_callbacks(execute=True):
        run = run_billing_sweep(now=due + GRACE_PERIOD)
    assert run.counts["terminated"] == 1 and run.counts["auto_top_up_triggered"] == 0
    sub.refresh_from_db()
    assert sub.cancellation_reason == "payment_failed"
    assert balance(user) == 10 * MICROS == ledger_sum(user)
    assert TopUpAttempt.objects.count() == 1


def test_each_due_term_gets_its_own_single_attempt(
    short_with_auto_top_up, settings, django_capture_on_commit_callbacks
):
    # SPEC L4: "at most one top-up attempt for that due term" — the next term may have one.
    settings.CODING_PLANS_TOP_UP_BACKEND = "simulated-approve"
    _user, sub = short_with_auto_top_up(amount_usd=20)
    due = sub.current_period_end
    for now in (due, due + timedelta(hours=2), due + timedelta(hours=5)):
        with django_capture_on_commit_callbacks(execute=True):
            run_billing_sweep(now=now)
    sub.refresh_from_db()
    assert sub.status == "active" and sub.current_period_end == due + timedelta(days=30)
    next_due = sub.current_period_end
    with django_capture_on_commit_callbacks(execute=True):
        run = run_billing_sweep(now=next_due)
    assert run.counts["auto_top_up_triggered"] == 1
    assert list(TopUpAttempt.objects.order_by("due_at").values_list("due_at", flat=True)) == [
        due,
        next_due,
    ]


def test_top_up_lost_before_it_ran_is_retried_by_the_next_sweep_in_grace(
    short_with_auto_top_up, settings, django_capture_on_commit_callbacks
):
    # SPEC L4, S5: the attempt is recorded in the sweep's transaction and charged after the
    # commit. If the process dies in between (here: the callbacks of the first sweep are never
    # run), the attempt stays pending; a later sweep within grace charges that same attempt
    # (never a second one) so the customer's auto top-up is not silently lost.
    settings.CODING_PLANS_TOP_UP_BACKEND = "simulated-approve"
    user, sub = short_with_auto_top_up(amount_usd=20)
    due = sub.current_period_end
    run_billing_sweep(now=due)  # its on-commit work never runs
    attempt = TopUpAttempt.objects.get()
    assert attempt.status == TopUpAttempt.Status.PENDING and balance(user) == 0

    with django_capture_on_commit_callbacks(execute=True):
        retry = run_billing_sweep(now=due + timedelta(hours=1))
    assert retry.counts["auto_top_up_triggered"] == 0  # the same attempt, not a new one
    attempt.refresh_from_db()
    assert attempt.status == TopUpAttempt.Status.APPROVED
    assert TopUpAttempt.objects.count() == 1
    assert LedgerEntry.objects.filter(kind="top_up").count() == 1
    with django_capture_on_commit_callbacks(execute=True):
        run = run_billing_sweep(now=due + timedelta(hours=2))
    assert run.counts["renewed"] == 1


def test_lifecycle_emails_are_not_sent_when_the_transaction_does_not_commit(
    short_with_auto_top_up, settings
):
    # SPEC L4/L3 e-mails go through on_commit: without a commit (the test's transaction is
    # rolled back and its callbacks discarded) nothing is sent and no top-up is charged.
    settings.CODING_PLANS_TOP_UP_BACKEND = "simulated-approve"
    _user, sub = short_with_auto_top_up()
    run_billing_sweep(now=sub.current_period_end)
    assert mail.outbox == []
    assert not LedgerEntry.objects.filter(kind="top_up").exists()


class ProcessorOutage:
    """A payment processor that is down: every charge raises (a network error, say)."""

    name = "processor-outage"

    def charge(self, *, attempt_id: int, user_id: int, amount_micros: int):
        raise ConnectionError("payment processor unreachable")


def test_processor_failure_is_not_a_sweep_error_and_is_retried_in_grace(
    short_with_auto_top_up, settings, monkeypatch, caplog, django_capture_on_commit_callbacks
):
    # SPEC L1, L4, S5: the top-up runs after the sweep's commit; if the processor fails, the
    # subscription is still counted once (past_due, not also an error), the attempt stays
    # pending, and the next sweep within grace charges that same attempt.
    monkeypatch.setitem(BACKENDS, ProcessorOutage.name, ProcessorOutage)  # the plug-in point
    settings.CODING_PLANS_TOP_UP_BACKEND = ProcessorOutage.name
    user, sub = short_with_auto_top_up(amount_usd=20)
    due = sub.current_period_end
    with django_capture_on_commit_callbacks(execute=True):
        run = run_billing_sweep(now=due)
    assert run.counts["past_due"] == 1 and run.counts["errors"] == 0
    assert run.counts["auto_top_up_triggered"] == 1
    assert "payment processor unreachable" in caplog.text  # logged, not raised
    attempt = TopUpAttempt.objects.get()
    assert attempt.status == TopUpAttempt.Status.PENDING and balance(user) == 0

    settings.CODING_PLANS_TOP_UP_BACKEND = "simulated-approve"  # the processor is back
    with django_capture_on_commit_callbacks(execute=True):
        retry = run_billing_sweep(now=due + timedelta(hours=3))
    assert retry.counts == dict.fromkeys(retry.counts, 0)
    attempt.refresh_from_db()
    assert attempt.status == TopUpAttempt.Status.APPROVED and balance(user) == 20 * MICROS
    with django_capture_on_commit_callbacks(execute=True):
        assert run_billing_sweep(now=due + timedelta(hours=4)).counts["renewed"] == 1
    assert TopUpAttempt.objects.count() == 1
