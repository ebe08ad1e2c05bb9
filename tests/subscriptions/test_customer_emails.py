"""Customer e-mails (SPEC E1; issue 19): the purchase and renewal receipts, the renewal
reminder, "cancellation scheduled" and "plan ended" — each sent once per event, after commit,
through a Celery task, as text + HTML, amounts in USD and times in UTC with the date spelled
out, never with a secret in it."""

from __future__ import annotations

import smtplib
from datetime import UTC, datetime, timedelta

import pytest
from django.core import mail
from django.core.mail.backends.locmem import EmailBackend as LocmemBackend
from django.db import transaction
from django.utils import timezone

from accounts.services import delete_account, set_notification_preferences
from billing.services import set_auto_top_up
from subscriptions import emails, tasks
from subscriptions.actions import (
    cancel_at_period_end,
    end_subscription,
    resume_subscription,
    terminate_subscription,
)
from subscriptions.models import CustomerEmail, Subscription
from subscriptions.purchase import purchase_plan
from subscriptions.sweep import run_billing_sweep

pytestmark = pytest.mark.django_db

PLUS = "minimax-token-plan-plus"
MICROS = 1_000_000
L1_KEYS = {"renewed", "past_due", "terminated", "canceled", "auto_top_up_triggered", "errors"}
T0 = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)  # a Monday
PERIOD_END = T0 + timedelta(days=30)  # Wednesday, 4 February 2026, 09:30 UTC


@pytest.fixture
def subscriber(make_user, stock, django_capture_on_commit_callbacks):
    def make(credits_usd: int = 40, **extra):
        user = make_user(credits_usd=credits_usd, **extra)
        stock(PLUS)
        # The purchase commits as in production: its receipt (written with it) is sent, and
        # each test starts with an empty outbox.
        with django_capture_on_commit_callbacks(execute=True):
            outcome = purchase_plan(user=user, plan_id=PLUS, idempotency_key=f"k{user.pk}", now=T0)
        mail.outbox.clear()
        return user, Subscription.objects.get(pk=outcome.subscription_id)

    return make


@pytest.fixture
def after_commit(django_capture_on_commit_callbacks):
    """Run on-commit hooks as a real commit would (the test's transaction never commits)."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


def kinds_sent() -> list[str]:
    return list(
        CustomerEmail.objects.filter(status="sent").order_by("id").values_list("kind", flat=True)
    )


def html_of(message) -> str:
    (html,) = [content for content, mimetype in message.alternatives if mimetype == "text/html"]
    return html


def both(message) -> str:
    return message.subject + "\n" + message.body + "\n" + html_of(message)


# --- each kind, once per event ------------------------------------------------------------------


def test_purchase_receipt_is_sent_once_after_commit(make_user, stock, after_commit):
    user = make_user(credits_usd=100)
    stock(PLUS)
    with after_commit() as hooks:
        outcome = purchase_plan(user=user, plan_id=PLUS, idempotency_key="once", now=T0)
        assert mail.outbox == []  # nothing before the commit
    assert len(hooks) >= 1
    (receipt,) = mail.outbox
    assert receipt.to == [user.email]
    assert receipt.subject == "Receipt: Token Plan Plus, $20.00"
    text = both(receipt)
    for expected in (
        "$20.00",
        "paid with Credits",
        "Balance after: $80.00",
        "Monday, 5 January 2026 at 09:30 UTC",
        "Wednesday, 4 February 2026 at 09:30 UTC",
        f"/subscriptions/coding-plans/{outcome.subscription_id}/",
    ):
        assert expected in text, expected
    assert "<h1" in html_of(receipt) and "<h1" not in receipt.body  # multipart: text + HTML
    # A replayed request (same idempotency key) sends nothing more, nor does a repeated hook.
    with after_commit():
        purchase_plan(user=user, plan_id=PLUS, idempotency_key="once", now=T0)
    assert emails.queue(emails.PURCHASE_RECEIPT, outcome.subscription_id) is False
    assert len(mail.outbox) == 1


def test_renewal_receipt_once_across_two_sweeps_at_the_same_instant(subscriber, after_commit):
    subscriber(credits_usd=40)
    for _ in range(2):
        with after_commit():
            run = run_billing_sweep(now=PERIOD_END)
    (receipt,) = mail.outbox
    assert receipt.subject == "Receipt: Token Plan Plus renewed, $20.00"
    text = both(receipt)
    assert "Wednesday, 4 February 2026 at 09:30 UTC" in text  # the new period's start
    assert "Friday, 6 March 2026 at 09:30 UTC" in text  # and end
    assert "Balance after: $0.00" in receipt.body
    assert run.counts["renewed"] == 0
    assert kinds_sent() == ["purchase_receipt", "renewal_receipt"]  # the fixture's purchase


def test_renewal_reminder_three_days_before_a_renewal_the_balance_will_not_cover(
    subscriber, after_commit
):
    subscriber(credits_usd=30)  # $10 left for a $20 renewal, auto top-up off
    with after_commit():
        early = run_billing_sweep(now=PERIOD_END - timedelta(days=3, minutes=1))
    assert early.counts["reminders_sent"] == 0 and mail.outbox == []
    at = PERIOD_END - timedelta(days=2, hours=23)
    with after_commit():
        first = run_billing_sweep(now=at)
    with after_commit():
        second = run_billing_sweep(now=at)  # the same faked instant
    with after_commit():
        later = run_billing_sweep(now=at + timedelta(days=1))
    assert [first.counts["reminders_sent"], second.counts["reminders_sent"]] == [1, 0]
    assert later.counts["reminders_sent"] == 0
    # SPEC L1's keys are all still there; reminders_sent is one more (O2: the run records it).
    assert set(first.counts) > L1_KEYS
    (reminder,) = mail.outbox
    assert reminder.subject == "Add credits: your Token Plan Plus renews on 4 February 2026"
    text = both(reminder)
    for expected in (
        "Wednesday, 4 February 2026 at 09:30 UTC",
        "$20.00",
        "Your balance is $10.00",
        "Add at least $10.00",
        "/credits/",
        "/account/#notifications",  # how to turn it off
    ):
        assert expected in text, expected


def test_no_reminder_when_covered_canceling_auto_top_up_on_or_turned_off(
    subscriber, after_commit, settings
):
    settings.CODING_PLANS_TOP_UP_BACKEND = "simulated-approve"
    subscriber(credits_usd=40)
    leaving, leaving_sub = subscriber(credits_usd=20)
    cancel_at_period_end(user=leaving, subscription_id=leaving_sub.pk, now=T0)
    topping, _ = subscriber(credits_usd=20)
    set_auto_top_up(user=topping, enabled=True, amount_micros=20 * MICROS, actor="t", now=T0)
    quiet, _ = subscriber(credits_usd=20)
    set_notification_preferences(user=quiet, renewal_reminders=False, now=T0)
    with after_commit():
        run = run_billing_sweep(now=PERIOD_END - timedelta(days=1))
    assert run.counts["reminders_sent"] == 0
    assert [m for m in mail.outbox if "renews on" in m.subject] == []


def test_auto_top_up_without_a_processor_does_not_silence_the_reminder(
    subscriber, after_commit, settings
):
    # SPEC M7: with no processor configured auto top-up cannot run, so the reminder still goes.
    settings.CODING_PLANS_TOP_UP_BACKEND = "simulated-approve"
    user, _sub = subscriber(credits_usd=20)
    set_auto_top_up(user=user, enabled=True, amount_micros=20 * MICROS, actor="t", now=T0)
    settings.CODING_PLANS_TOP_UP_BACKEND = ""
    with after_commit():
        run = run_billing_sweep(now=PERIOD_END - timedelta(days=1))
    assert run.counts["reminders_sent"] == 1
    (reminder,) = mail.outbox
    assert "automatic top-up is not available right now" in reminder.body


def test_reminders_are_found_in_keyset_batches(subscriber, after_commit):
    subs = [subscriber(credits_usd=20)[1] for _ in range(5)]
    with after_commit():
        run = run_billing_sweep(now=PERIOD_END - timedelta(days=1), batch_size=2)
    assert run.counts["reminders_sent"] == 5
    assert sorted(m.to[0] for m in mail.outbox) == sorted(s.user.email for s in subs)


def test_cancellation_scheduled_once_per_cancellation(subscriber, after_commit):
    user, sub = subscriber()
    with after_commit():
        cancel_at_period_end(user=user, subscription_id=sub.pk, now=T0 + timedelta(days=1))
    with after_commit():
        cancel_at_period_end(user=user, subscription_id=sub.pk, now=T0 + timedelta(days=2))
    (notice,) = mail.outbox
    assert notice.subject == "Your Token Plan Plus is set to end on 4 February 2026"
    assert "Access until Wednesday, 4 February 2026 at 09:30 UTC" in both(notice)
    assert "Tuesday, 6 January 2026 at 09:30 UTC" in notice.body  # when it was asked
    # Undone and asked again: a new event, a new e-mail.
    resume_subscription(user=user, subscription_id=sub.pk, now=T0 + timedelta(days=3))
    with after_commit():
        cancel_at_period_end(user=user, subscription_id=sub.pk, now=T0 + timedelta(days=4))
    assert len(mail.outbox) == 2


@pytest.mark.parametrize(
    ("reason", "words"),
    [
        ("insufficient_credits", "did not cover its renewal price of $20.00 and automatic top-up"),
        ("user_requested", "You canceled it"),
        ("administrative_termination", "An operator ended it"),
    ],
)
def test_plan_ended_says_why_once(subscriber, after_commit, reason, words):
    user, sub = subscriber(credits_usd=30)
    if reason == "user_requested":
        cancel_at_period_end(user=user, subscription_id=sub.pk, now=T0)
    if reason == "administrative_termination":
        with after_commit():
            terminate_subscription(subscription_id=sub.pk, actor="system:test", now=T0)
    for _ in range(2):
        with after_commit():
            run_billing_sweep(now=PERIOD_END)
    (ended,) = [m for m in mail.outbox if "has ended" in m.subject]
    assert ended.subject == "Your Token Plan Plus has ended"
    assert words in ended.body and words in html_of(ended)
    ended_at = T0 if reason == "administrative_termination" else PERIOD_END
    assert f"{ended_at:%A}, {ended_at.day} {ended_at:%B %Y} at {ended_at:%H:%M} UTC" in ended.body
    assert CustomerEmail.objects.filter(kind="plan_ended").count() == 1


def test_a_deleted_account_gets_no_mail(subscriber, after_commit):
    user, _sub = subscriber()
    address = user.email
    with after_commit():
        delete_account(user=user, actor=f"user:{user.pk}", now=T0)
    assert mail.outbox == []
    assert CustomerEmail.objects.get(kind="plan_ended").status == "skipped"
    assert address not in str(list(CustomerEmail.objects.values()))


# --- outbox rows: each e-mail's row commits with its change --------------------------------


def test_cancellation_row_is_written_in_the_cancellations_transaction_before_any_hook(
    subscriber, django_capture_on_commit_callbacks
):
    """A process that dies right after the cancellation commits (before its hooks) still has
    the e-mail: the row is already there, pending, for the sweep to queue (SPEC E1)."""
    user, sub = subscriber()
    with django_capture_on_commit_callbacks(execute=False) as hooks:
        cancel_at_period_end(user=user, subscription_id=sub.pk, now=T0 + timedelta(days=1))
        (email,) = CustomerEmail.objects.filter(kind="cancellation_scheduled")
    assert (email.subscription_id, email.status) == (sub.pk, "pending")
    assert mail.outbox == [] and hooks  # the sending waits for the commit
    # The process died before its hooks ran. Eleven minutes on (the row's stamp is the wall
    # clock's), the hourly sweep queues what is still pending.
    CustomerEmail.objects.filter(pk=email.pk).update(
        created_at=timezone.now() - timedelta(minutes=11)
    )
    run_billing_sweep(now=timezone.now())
    email.refresh_from_db()
    assert email.status == "sent"
    (notice,) = mail.outbox
    assert notice.subject == "Your Token Plan Plus is set to end on 4 February 2026"


def test_plan_ended_row_commits_with_the_end_or_not_at_all(
    subscriber, django_capture_on_commit_callbacks
):
    _user, sub = subscriber()

    class Abandon(Exception):
        pass

    with pytest.raises(Abandon), transaction.atomic():
        locked = Subscription.objects.select_for_update().get(pk=sub.pk)
        end_subscription(
            subscription=locked, reason="administrative_termination", actor="system:test", now=T0
        )
        assert CustomerEmail.objects.filter(kind="plan_ended").count() == 1
        raise Abandon  # the change rolls back: so does its e-mail's row
    assert not CustomerEmail.objects.filter(kind="plan_ended").exists()
    with django_capture_on_commit_callbacks(execute=False) as hooks:
        terminate_subscription(subscription_id=sub.pk, actor="system:test", now=T0)
        (email,) = CustomerEmail.objects.filter(kind="plan_ended")
    assert email.status == "pending" and mail.outbox == []
    for hook in hooks:
        hook()
    email.refresh_from_db()
    assert email.status == "sent" and len(mail.outbox) == 1


# --- the task: retries, duplicates, a worker that died ---------------------------------------


class FlakyBackend(LocmemBackend):
    """Locmem, but the first `failures` sends fail like a mail server that hung up."""

    failures = 0

    def send_messages(self, messages):
        if FlakyBackend.failures > 0:
            FlakyBackend.failures -= 1
            raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
        return super().send_messages(messages)


def _recorded_not_sent(monkeypatch, subscriber, after_commit) -> CustomerEmail:
    user, sub = subscriber()
    queued: list[int] = []
    monkeypatch.setattr(emails, "_deliver", queued.append)  # the broker takes it, nothing runs
    with after_commit():
        cancel_at_period_end(user=user, subscription_id=sub.pk, now=T0)
    monkeypatch.undo()
    (email,) = CustomerEmail.objects.filter(pk__in=queued)
    assert email.status == "pending" and mail.outbox == []
    return email


def test_a_retried_or_duplicated_task_never_sends_twice(
    monkeypatch, subscriber, after_commit, settings
):
    email = _recorded_not_sent(monkeypatch, subscriber, after_commit)
    settings.EMAIL_BACKEND = f"{__name__}.FlakyBackend"
    FlakyBackend.failures = 1
    # The first attempt fails at the mail server; Celery retries (eagerly, here) and it goes.
    assert tasks.send_customer_email.apply(args=[email.pk], throw=False).get() == "sent"
    email.refresh_from_db()
    assert (email.status, email.attempts, len(mail.outbox)) == ("sent", 2, 1)
    # A duplicate delivery of the task (or a retry after success) sends nothing.
    assert tasks.send_customer_email.apply(args=[email.pk], throw=False).get() == "already"
    assert emails.requeue_unsent() == 0
    assert len(mail.outbox) == 1


def test_the_sweep_requeues_what_the_broker_or_a_dead_worker_left(
    monkeypatch, subscriber, after_commit
):
    email = _recorded_not_sent(monkeypatch, subscriber, after_commit)
    # Claimed by a worker that died mid-send: not taken again until the claim is stale.
    CustomerEmail.objects.filter(pk=email.pk).update(status="sending", claimed_at=timezone.now())
    run_billing_sweep(now=timezone.now())
    assert mail.outbox == []
    # Eleven minutes later (the task judges the claim by its own clock).
    CustomerEmail.objects.filter(pk=email.pk).update(
        claimed_at=timezone.now() - timedelta(minutes=11)
    )
    run_billing_sweep(now=timezone.now())
    assert len(mail.outbox) == 1
    assert kinds_sent() == ["purchase_receipt", "cancellation_scheduled"]
    run_billing_sweep(now=timezone.now() + timedelta(hours=2))
    assert len(mail.outbox) == 1


def test_an_unreachable_mail_server_leaves_the_email_pending_not_the_purchase_failed(
    make_user, stock, after_commit, settings
):
    settings.EMAIL_BACKEND = f"{__name__}.FlakyBackend"
    FlakyBackend.failures = 100
    user = make_user(credits_usd=100)
    stock(PLUS)
    # Bought now, so the sweep below (at the clock's now) has nothing due. Bought at T0, it
    # would renew the months since, and their receipts, recorded with each renewal (issue 20),
    # would be sent by that sweep as well.
    with after_commit():
        outcome = purchase_plan(user=user, plan_id=PLUS, idempotency_key="k", now=timezone.now())
    assert Subscription.objects.get(pk=outcome.subscription_id).status == "active"
    email = CustomerEmail.objects.get(kind="purchase_receipt")
    assert email.status == "pending" and email.last_error == "SMTPServerDisconnected"
    FlakyBackend.failures = 0
    # Eleven minutes on (the rows' stamps are the wall clock's), the sweep queues it again.
    CustomerEmail.objects.filter(pk=email.pk).update(
        created_at=timezone.now() - timedelta(minutes=11)
    )
    run_billing_sweep(now=timezone.now())
    email.refresh_from_db()
    assert email.status == "sent" and len(mail.outbox) == 1


# --- no secret, ever ------------------------------------------------------------------------------


def test_no_secret_in_any_customer_email(make_user, stock, after_commit, settings):
    """SPEC E1, S1: the canary keys (the plan's credential, the customer's own key, the API
    token, the site's secrets) appear in no e-mail of any kind."""
    from accounts.tokens import create_api_token
    from byok.services import add_key

    settings.CODING_PLANS_TOP_UP_BACKEND = "simulated-approve"
    canaries = {
        settings.SECRET_KEY,
        settings.CODING_PLANS_FINGERPRINT_KEY,
        *settings.CODING_PLANS_ENCRYPTION_KEYS,
    }
    if settings.STRIPE_SECRET_KEY:
        canaries |= {settings.STRIPE_SECRET_KEY, settings.STRIPE_WEBHOOK_SECRET}
    with after_commit():
        users = []
        for credits in (30, 40, 40):
            user = make_user(credits_usd=credits)
            canaries.add(stock(PLUS)[0])  # the credential each purchase installs
            purchase_plan(user=user, plan_id=PLUS, idempotency_key="c", now=T0)
            canaries.add(create_api_token(user=user, now=T0).plaintext)
            users.append(user)
        own_key = "sk-own-canary-000001"
        add_key(user=make_user(), provider_id="minimax", api_key=own_key, now=T0)
        canaries.add(own_key)
        _short, _renewing, leaving = users
        cancel_at_period_end(user=leaving, subscription_id=leaving.subscriptions.get().pk, now=T0)
    with after_commit():
        run_billing_sweep(now=PERIOD_END - timedelta(days=1))  # the reminder
    with after_commit():
        run_billing_sweep(now=PERIOD_END)  # renewal, L3 ending, L5 ending
    assert set(kinds_sent()) == {
        "purchase_receipt",
        "renewal_reminder",
        "renewal_receipt",
        "cancellation_scheduled",
        "plan_ended",
    }
    assert len(mail.outbox) == len(kinds_sent())
    for message in mail.outbox:
        content = both(message)
        leaked = [c for c in canaries if c and c in content]
        assert not leaked, (message.subject, leaked)
        assert "sk-" not in content  # nothing key-shaped at all
