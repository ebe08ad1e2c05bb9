"""The billing sweep as a whole (SPEC L1, O2): counts, batches, backlog, failures, entry points."""

from __future__ import annotations

import io
import json
import logging
from datetime import timedelta

import pytest
from celery.schedules import crontab
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from billing.models import CreditAccount, LedgerEntry
from billing.services import set_auto_top_up
from codingplans.celery import app as celery_app
from subscriptions.actions import cancel_at_period_end
from subscriptions.models import ChargedTerm, Subscription, SweepRun
from subscriptions.sweep import run_billing_sweep
from tests.lifecycle.helpers import MICROS, PLUS, balance, bulk_due_subscriptions, buy

pytestmark = pytest.mark.django_db

L1_KEYS = {"renewed", "past_due", "terminated", "canceled", "auto_top_up_triggered", "errors"}
# Issue 19 (SPEC E1): the run also counts the renewal reminders it queued; L1's keys all stay.
RUN_KEYS = L1_KEYS | {"reminders_sent"}


@pytest.fixture
def t0():
    return timezone.now().replace(microsecond=0)


def _corrupt_with_conflicting_term(sub: Subscription) -> None:
    """A genuine fault in the data: a term already occupies the next period's start, so the
    renewal's term insert violates the one-term-per-period constraint and raises."""
    account = CreditAccount.objects.get(user_id=sub.user_id)
    stray = LedgerEntry.objects.create(
        account=account,
        kind=LedgerEntry.Kind.ADJUSTMENT,
        amount_micros=0,
        balance_after_micros=account.balance_micros,
        actor="system:test",
        created_at=sub.created_at,
    )
    ChargedTerm.objects.create(
        subscription=sub,
        amount_micros=0,
        period_start=sub.current_period_end,
        period_end=sub.current_period_end + timedelta(days=30),
        charged_at=sub.created_at,
        description="conflicting term",
        ledger_entry=stray,
    )


def test_counts_have_exactly_the_l1_keys_and_count_each_outcome(
    make_user, stock, settings, t0, caplog, django_capture_on_commit_callbacks
):
    # SPEC L1: renewed, past_due, terminated, canceled, auto_top_up_triggered, errors.
    settings.CODING_PLANS_TOP_UP_BACKEND = "simulated-decline"
    stock(PLUS, 5)
    renewing, grace, short, leaving, broken = (
        make_user(credits_usd=c) for c in (40, 20, 20, 40, 40)
    )
    set_auto_top_up(user=grace, enabled=True, amount_micros=5 * MICROS, actor="t", now=t0)
    subs = {u: buy(u, t0) for u in (renewing, grace, short, leaving, broken)}
    cancel_at_period_end(user=leaving, subscription_id=subs[leaving].pk, now=t0)
    _corrupt_with_conflicting_term(subs[broken])

    caplog.set_level(logging.ERROR, logger="subscriptions.sweep")
    with django_capture_on_commit_callbacks(execute=True):
        run = run_billing_sweep(now=subs[renewing].current_period_end)

    assert set(run.counts) == RUN_KEYS
    assert run.counts == {
        "renewed": 1,
        "past_due": 1,
        "terminated": 1,
        "canceled": 1,
        "auto_top_up_triggered": 1,
        "errors": 1,
        "reminders_sent": 0,
    }
    # SPEC O2: the run is recorded with its counts and the failing subscription's id.
    stored = SweepRun.objects.get(pk=run.pk)
    assert stored.counts == run.counts and stored.finished_at is not None
    # `as_of` is the clock the run judged by; start and finish are both wall-clock times.
    assert stored.as_of == subs[renewing].current_period_end
    assert stored.started_at <= stored.finished_at
    assert [e["subscription_id"] for e in stored.errors] == [subs[broken].pk]
    assert f"subscription {subs[broken].pk}" in caplog.text
    # The failing one is untouched (its transaction rolled back, balance intact) ...
    failing = Subscription.objects.get(pk=subs[broken].pk)
    assert (
        failing.status == "active" and failing.current_period_end == subs[broken].current_period_end
    )
    assert balance(broken) == 20 * MICROS
    # ... and the others proceeded.
    statuses = dict(
        Subscription.objects.filter(pk__in=[s.pk for s in subs.values()]).values_list(
            "user_id", "status"
        )
    )
    assert statuses[renewing.pk] == "active" and statuses[grace.pk] == "past_due"
    assert statuses[short.pk] == "canceled" and statuses[leaving.pk] == "canceled"


def test_subscription_whose_credit_account_vanished_is_an_error_not_a_stop(make_user, stock, t0):
    # SPEC L1: one failing subscription is logged and counted; the rest proceed. The fault: its
    # credit account row is deleted by raw SQL while the ledger's foreign key check is deferred.
    stock(PLUS, 3)
    users = [make_user(credits_usd=40) for _ in range(3)]
    subs = [buy(u, t0) for u in users]
    victim = CreditAccount.objects.get(user=users[1])
    row = CreditAccount.objects.filter(pk=victim.pk).values().get()
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL DEFERRED")
        cursor.execute("DELETE FROM billing_creditaccount WHERE id = %s", [victim.pk])
    try:
        run = run_billing_sweep(now=subs[0].current_period_end)
        assert run.counts["errors"] == 1 and run.counts["renewed"] == 2
        assert run.errors == [{"subscription_id": subs[1].pk, "error": "DoesNotExist"}]
        assert Subscription.objects.get(pk=subs[1].pk).status == "active"
    finally:
        CreditAccount.objects.create(**row)  # restore it so the deferred check passes


def test_batches_of_three_process_all_ten_due_subscriptions(t0):
    # SPEC L1: bounded batches, batch after batch until nothing is due.
    due = bulk_due_subscriptions(10, due_at=t0, funded=lambda i: i % 2 == 0)
    run = run_billing_sweep(now=t0, batch_size=3)
    assert run.counts["renewed"] == 5 and run.counts["terminated"] == 5
    assert not Subscription.objects.filter(
        pk__in=[d.id for d in due], status="active", current_period_end__lte=t0
    ).exists()


def test_backlog_of_several_periods_drains_in_one_run(subscriber_with_backlog):
    # SPEC L1: after an outage, a subscription several periods behind renews period by period
    # in a single run (even with the smallest batch), each term from the previous end (L2).
    sub, end, now = subscriber_with_backlog
    run = run_billing_sweep(now=now, batch_size=1)
    assert run.counts["renewed"] == 4 and run.counts["terminated"] == 1
    terms = list(ChargedTerm.objects.filter(subscription=sub).order_by("period_start"))
    assert [t.period_start for t in terms[1:]] == [end + timedelta(days=30 * k) for k in range(4)]
    sub.refresh_from_db()
    assert sub.status == "canceled" and sub.cancellation_reason == "insufficient_credits"


@pytest.fixture
def subscriber_with_backlog(make_user, stock, t0):
    stock(PLUS)
    user = make_user(credits_usd=100)  # $80 after purchase: four renewals, then short
    sub = buy(user, t0)
    end = sub.current_period_end
    return sub, end, end + timedelta(days=125)


def test_backlog_renewed_to_the_period_end_of_a_row_already_passed_still_drains(
    make_user, stock, t0
):
    """SPEC L1, found by the lifecycle state machine: the keyset cursor moves past (end, id)
    of each row it takes. A (lower id) is a period behind; renewed once, its new period end
    equals B's, but A's id is lower, so the cursor, now at B, had already passed it."""
    stock(PLUS, 2)
    a_user, b_user = make_user(credits_usd=100), make_user(credits_usd=100)
    a = buy(a_user, t0 - timedelta(days=60))  # period end t0 - 30 days
    b = buy(b_user, t0 - timedelta(days=30))  # period end t0
    assert a.pk < b.pk
    run = run_billing_sweep(now=t0)
    a.refresh_from_db()
    b.refresh_from_db()
    assert a.current_period_end == t0 + timedelta(days=30)  # renewed twice
    assert b.current_period_end == t0 + timedelta(days=30)
    assert run.counts["renewed"] == 3 and run.counts["errors"] == 0


def test_time_budget_spent_leaves_the_rest_for_the_next_run(t0):
    # SPEC L1: the run stops when its time budget is spent; nothing is half done.
    bulk_due_subscriptions(3, due_at=t0, funded=lambda i: True)
    assert run_billing_sweep(now=t0, time_budget_seconds=0).counts["renewed"] == 0
    assert run_billing_sweep(now=t0).counts["renewed"] == 3


def test_run_billing_sweep_command_prints_one_json_object_with_the_l1_keys(make_user, stock):
    # SPEC 11.2 run_billing_sweep: one sweep at the process's current time, counts as JSON.
    stock(PLUS)
    user = make_user(credits_usd=40)
    sub = buy(user, timezone.now() - timedelta(days=31))
    out = io.StringIO()
    call_command("run_billing_sweep", stdout=out)
    counts = json.loads(out.getvalue())
    assert isinstance(counts, dict) and set(counts) == RUN_KEYS
    assert counts["renewed"] == 1
    run = SweepRun.objects.get()
    assert run.trigger == SweepRun.Trigger.COMMAND and run.counts == counts
    sub.refresh_from_db()
    assert sub.current_period_end > timezone.now()


def test_celery_task_is_registered_and_scheduled_hourly(settings, make_user, stock):
    # SPEC L1: a Celery beat task runs the billing sweep hourly.
    name = "subscriptions.tasks.run_billing_sweep"
    celery_app.loader.import_default_modules()  # what a worker does at start: autodiscovery
    assert name in celery_app.tasks
    entries = [e for e in settings.CELERY_BEAT_SCHEDULE.values() if e["task"] == name]
    assert len(entries) == 1
    schedule = entries[0]["schedule"]
    assert isinstance(schedule, crontab)
    assert schedule.minute == {0} and schedule.hour == set(range(24))
    assert schedule.day_of_week == set(range(7)) and schedule.day_of_month == set(range(1, 32))
    # It runs the sweep (eagerly here) and records a beat-triggered run.
    stock(PLUS)
    buy(make_user(credits_usd=40), timezone.now() - timedelta(days=30, minutes=1))
    counts = celery_app.tasks[name].delay().get()
    assert set(counts) == RUN_KEYS and counts["renewed"] == 1
    assert SweepRun.objects.get().trigger == SweepRun.Trigger.BEAT
