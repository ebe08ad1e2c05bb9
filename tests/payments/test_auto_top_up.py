"""Auto top-up by the saved card, off-session, through the sweep (SPEC M4, L4, S5, M8).

Real HTTP to the embedded localstripe through the official SDK; real commits
(`transaction=True`), so the sweep's on-commit charge runs as the Celery task does (eager in
tests); faked time by passing `now` to `run_billing_sweep`. Test cards (SPEC M4, issue 16):
4242… succeeds off-session, 4000 0000 0000 0341 is saved but declined when charged,
4000 0027 6000 3184 requires authentication (localstripe answers `requires_action`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from django.core import mail
from django.db import connection
from django.test import Client
from django.utils import timezone

from billing.models import CreditAccount, LedgerEntry, TopUpAttempt
from billing.services import grant_credits, set_auto_top_up
from billing.topup import BACKENDS, ChargeResult
from payments.models import CardPayment, StripeCustomer
from payments.topup import StripeTopUp
from subscriptions.errors import SubscriptionExists
from subscriptions.models import Subscription
from subscriptions.purchase import purchase_plan
from subscriptions.sweep import run_billing_sweep
from tests.billing.helpers import ledger_state
from tests.lifecycle.helpers import buy
from tests.payments.conftest import api_client, new_card, pay

pytestmark = pytest.mark.django_db(transaction=True)

MICROS = 1_000_000
ULTRA = "minimax-token-plan-ultra"
PLUS = "minimax-token-plan-plus"
OK_CARD = "4242424242424242"
DECLINED_CARD = "4000000000000341"
AUTH_CARD = "4000002760003184"
ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 20


@pytest.fixture
def stripe_backend(settings):
    settings.CODING_PLANS_TOP_UP_BACKEND = "stripe"


def save_card(user, localstripe, sdk, number: str) -> str:
    """The customer's saved card. 4242 is saved the product's way (a payment with "save this
    card"); a card that cannot pay on-session today (0341 declines every charge, 3184 needs the
    bank) is attached at Stripe and recorded as the saved card directly, as it would be had it
    worked when it was saved."""
    client = api_client(user)
    pm = new_card(client, localstripe, number)
    if number == OK_CARD:
        response = pay(client, "5.00", payment_method_id=pm, save_card=True)
        assert response.status_code == 201, response.content
        assert StripeCustomer.objects.get(user=user).payment_method_id == pm
        return pm
    customer = StripeCustomer.objects.get(user=user)
    sdk.v1.payment_methods.attach(pm, params={"customer": customer.customer_id})
    StripeCustomer.objects.filter(pk=customer.pk).update(
        payment_method_id=pm, card_brand="visa", card_last4=number[-4:]
    )
    return pm


@pytest.fixture
def ultra_subscriber(make_user, stock, localstripe, sdk, stripe_backend):
    """An Ultra ($120) subscriber with $15 left, a saved card and auto top-up of $20 on: the
    issue's example, which charges $105 (SPEC M4)."""

    def make(number: str = OK_CARD):
        stock(ULTRA)
        now = timezone.now().replace(microsecond=0)
        user = make_user(credits_usd=130 if number == OK_CARD else 135)
        subscription = buy(user, now, ULTRA)  # $10 or $15 left
        save_card(user, localstripe, sdk, number)  # 4242: +$5 by card
        set_auto_top_up(user=user, enabled=True, amount_micros=20 * MICROS, actor="t", now=now)
        assert ledger_state(user)[0] == 15 * MICROS
        mail.outbox.clear()
        return user, subscription

    return make


def page(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def past_due_mail():
    return [m for m in mail.outbox if m.subject.startswith("Payment needed")]


def intents_for_attempt(sdk, attempt_id: int) -> list[dict]:
    found = []
    for intent in sdk.v1.payment_intents.list(params={"limit": 100}).auto_paging_iter():
        data = intent.to_dict()
        if (data.get("metadata") or {}).get("top_up_attempt_id") == str(attempt_id):
            found.append(data)
    return found


def test_off_session_top_up_succeeds_credits_and_a_later_sweep_renews(ultra_subscriber, sdk):
    # SPEC M4 (succeeded → credits through M2's path; a sweep within grace renews), S5, L4.
    user, sub = ultra_subscriber()
    due = sub.current_period_end
    run = run_billing_sweep(now=due)
    assert run.counts["past_due"] == 1 and run.counts["auto_top_up_triggered"] == 1
    assert run.counts["renewed"] == 0  # the renewal is for a later sweep (S5)

    attempt = TopUpAttempt.objects.get()
    assert attempt.backend == "stripe" and attempt.status == TopUpAttempt.Status.APPROVED
    assert attempt.amount_micros == 105 * MICROS  # max($20, $120 - $15), whole dollars
    payment = CardPayment.objects.get(top_up_attempt=attempt)
    assert payment.status == CardPayment.Status.SUCCEEDED
    (intent,) = intents_for_attempt(sdk, attempt.pk)
    assert intent["id"] == payment.payment_intent_id and intent["amount"] == 10_500
    assert intent["metadata"]["payment_id"] == str(payment.pk)
    entry = LedgerEntry.objects.get(kind=LedgerEntry.Kind.TOP_UP)  # S5: kind top_up
    assert entry.reference == f"stripe_pi:{payment.payment_intent_id}"  # once per PaymentIntent
    assert attempt.ledger_entry_id == entry.pk == payment.ledger_entry_id
    assert not LedgerEntry.objects.filter(kind=LedgerEntry.Kind.CARD_PAYMENT, account__user=user)[
        1:
    ].exists()  # only the $5 that saved the card
    assert ledger_state(user)[:3] == (120 * MICROS,) * 3
    sub.refresh_from_db()
    assert sub.status == Subscription.Status.PAST_DUE
    # The customer gets the receipt of the top-up (M9), no past-due e-mail.
    assert past_due_mail() == []
    (receipt,) = [m for m in mail.outbox if m.subject.startswith("Receipt")]
    assert "$105.00" in receipt.body and user.email in receipt.to

    nxt = run_billing_sweep(now=due + timedelta(hours=1))
    assert nxt.counts["renewed"] == 1 and nxt.counts["auto_top_up_triggered"] == 0
    sub.refresh_from_db()
    assert sub.status == Subscription.Status.ACTIVE and sub.current_period_start == due
    assert ledger_state(user)[:3] == (0,) * 3

    # The attempt's charge again (a re-delivered task) changes nothing and charges nothing.
    StripeTopUp().charge(attempt_id=attempt.pk, user_id=user.pk, amount_micros=105 * MICROS)
    assert len(intents_for_attempt(sdk, attempt.pk)) == 1
    assert LedgerEntry.objects.filter(kind=LedgerEntry.Kind.TOP_UP).count() == 1


def test_declined_card_past_due_email_and_page_give_the_reason_and_link_to_credits(
    ultra_subscriber,
):
    # SPEC M4: declined → attempt `declined` with the decline code; the past-due e-mail and
    # the detail page say why in plain words and link to /credits. S5: no balance change.
    user, sub = ultra_subscriber(DECLINED_CARD)
    due = sub.current_period_end
    run = run_billing_sweep(now=due + timedelta(minutes=5))
    assert run.counts["past_due"] == 1 and run.counts["auto_top_up_triggered"] == 1
    attempt = TopUpAttempt.objects.get()
    assert attempt.status == TopUpAttempt.Status.DECLINED
    assert attempt.decline_code == "card_declined"
    assert CardPayment.objects.get(top_up_attempt=attempt).status == CardPayment.Status.FAILED
    declined = LedgerEntry.objects.get(kind=LedgerEntry.Kind.TOP_UP_DECLINED)
    assert declined.amount_micros == 0 and attempt.ledger_entry_id == declined.pk
    assert ledger_state(user)[:3] == (15 * MICROS,) * 3
    sub.refresh_from_db()
    assert sub.status == Subscription.Status.PAST_DUE
    assert sub.grace_deadline == due + timedelta(hours=24)

    (email,) = past_due_mail()
    assert "declined: Your card was declined." in email.body
    assert "$105.00" in email.body and "/credits" in email.body
    assert f"{sub.grace_deadline:%Y-%m-%d %H:%M} UTC" in email.body
    html = page(user).get(f"/subscriptions/coding-plans/{sub.pk}/").content.decode()
    assert 'id="top-up-declined"' in html and "Your card was declined." in html
    assert 'href="/credits/"' in html

    # L4: no second attempt in grace; at the deadline without funds the plan ends.
    assert run_billing_sweep(now=due + timedelta(hours=6)).counts["auto_top_up_triggered"] == 0
    end = run_billing_sweep(now=sub.grace_deadline)
    assert end.counts["terminated"] == 1
    sub.refresh_from_db()
    assert sub.cancellation_reason == "payment_failed"
    assert TopUpAttempt.objects.count() == 1 and len(past_due_mail()) == 1


def test_authentication_required_links_to_the_confirm_page_which_completes_it(
    ultra_subscriber, localstripe, webhook_to_live_server
):
    # SPEC M4: authentication required → attempt `requires_action`; the e-mail and the page
    # link to /credits/payments/<id>/confirm, where Stripe.js completes it (here: the request
    # localstripe's Stripe.js makes) and the webhook grants; a later sweep renews.
    user, sub = ultra_subscriber(AUTH_CARD)
    due = sub.current_period_end
    run_billing_sweep(now=due)
    attempt = TopUpAttempt.objects.get()
    payment = CardPayment.objects.get(top_up_attempt=attempt)
    confirm_url = f"/credits/payments/{payment.pk}/confirm/"
    assert attempt.status == TopUpAttempt.Status.REQUIRES_ACTION
    assert attempt.action_url == confirm_url
    assert payment.status == CardPayment.Status.REQUIRES_ACTION
    assert ledger_state(user)[0] == 15 * MICROS  # nothing yet
    (email,) = past_due_mail()
    assert confirm_url in email.body and "confirm" in email.body
    customer = page(user)
    html = customer.get(f"/subscriptions/coding-plans/{sub.pk}/").content.decode()
    assert 'id="top-up-requires-action"' in html and f'href="{confirm_url}"' in html

    confirm_page = customer.get(confirm_url)
    assert confirm_page.status_code == 200
    secret = confirm_page.context["client_secret"]
    assert secret and secret.startswith(payment.payment_intent_id)
    httpx.post(
        f"{localstripe['STRIPE_API_BASE']}/v1/payment_intents/{payment.payment_intent_id}/_authenticate",
        params={"success": "true"},
        json={"key": localstripe["STRIPE_PUBLISHABLE_KEY"], "client_secret": secret},
        timeout=10,
    ).raise_for_status()

    def granted():
        return LedgerEntry.objects.filter(kind=LedgerEntry.Kind.TOP_UP).first()

    from tests.payments.conftest import wait_for

    entry = wait_for(granted)  # payment_intent.succeeded, sent by localstripe to our webhook
    assert entry.reference == f"stripe_pi:{payment.payment_intent_id}"
    # The page's own check after Stripe.js finds it granted already: still one entry.
    customer.post(confirm_url)
    assert LedgerEntry.objects.filter(kind=LedgerEntry.Kind.TOP_UP).count() == 1
    attempt.refresh_from_db()
    assert attempt.status == TopUpAttempt.Status.APPROVED
    assert ledger_state(user)[:3] == (120 * MICROS,) * 3
    assert run_billing_sweep(now=due + timedelta(hours=2)).counts["renewed"] == 1


def test_no_saved_card_no_attempt_and_the_email_asks_for_a_card_or_credits(
    make_user, stock, settings
):
    # SPEC M4: no saved card → no attempt; the past-due e-mail asks for a card or credits.
    stock(PLUS)
    now = timezone.now().replace(microsecond=0)
    user = make_user(credits_usd=20)
    settings.CODING_PLANS_TOP_UP_BACKEND = "simulated-approve"  # turned on before stripe
    set_auto_top_up(user=user, enabled=True, amount_micros=20 * MICROS, actor="t", now=now)
    sub = buy(user, now)
    settings.CODING_PLANS_TOP_UP_BACKEND = "stripe"
    run = run_billing_sweep(now=sub.current_period_end)
    assert run.counts["past_due"] == 1 and run.counts["auto_top_up_triggered"] == 0
    assert not TopUpAttempt.objects.exists() and not CardPayment.objects.exists()
    (email,) = past_due_mail()
    assert "no saved card" in email.body and "Add a card" in email.body
    assert "/credits" in email.body


def test_auto_top_up_cannot_be_turned_on_without_a_saved_card(
    make_user, stripe_backend, localstripe, sdk
):
    # SPEC M4: clear message; API 409 with a stable code; the page says it too.
    user = make_user()
    client = api_client(user)
    response = client.put(
        "/api/v1/credits/auto-top-up",
        data={"enabled": True, "amount_usd": "20.00"},
        content_type="application/json",
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "no_payment_method"
    assert "saved card" in response.json()["error"]["message"]
    html = page(user).get("/credits/").content.decode()
    assert 'id="auto-top-up-needs-card"' in html
    form = page(user).post("/credits/auto-top-up/", {"enabled": "on", "amount_usd": "20"})
    assert form.status_code == 409 and "saved card" in form.content.decode()
    # Turning it off or changing the amount stays possible.
    off = client.put(
        "/api/v1/credits/auto-top-up",
        data={"enabled": False, "amount_usd": "30.00"},
        content_type="application/json",
    )
    assert off.status_code == 200
    # With a saved card it turns on.
    save_card(user, localstripe, sdk, OK_CARD)
    on = client.put(
        "/api/v1/credits/auto-top-up",
        data={"enabled": True, "amount_usd": "20.00"},
        content_type="application/json",
    )
    assert on.status_code == 200 and on.json()["auto_top_up"]["enabled"] is True


def test_removing_the_saved_card_turns_auto_top_up_off_and_says_so(
    make_user, stripe_backend, localstripe, sdk
):
    # SPEC M4: removing the card turns auto top-up off and says so.
    user = make_user()
    save_card(user, localstripe, sdk, OK_CARD)
    set_auto_top_up(
        user=user, enabled=True, amount_micros=20 * MICROS, actor="t", now=timezone.now()
    )
    response = page(user).post("/credits/payment-method/remove/", follow=True)
    html = response.content.decode()
    assert "The saved card was removed." in html and "Automatic top-up was turned off" in html
    assert not CreditAccount.objects.get(user=user).auto_top_up_enabled


class SlowStripe(StripeTopUp):
    """The real stripe backend, held before it calls Stripe until the test lets it go."""

    name = "test-slow-stripe"
    entered = threading.Event()
    release = threading.Event()

    def charge(self, **kwargs) -> ChargeResult:
        type(self).entered.set()
        assert type(self).release.wait(TIMEOUT), "the test never released the charge"
        return super().charge(**kwargs)


def test_the_processor_call_holds_no_row_lock(ultra_subscriber, monkeypatch, settings):
    # DESIGN "no call to an outside service under a row lock", SPEC M4: while the off-session
    # charge is in flight, the same customer's purchase, a grant and a settings change (each
    # takes the credit account's lock first) go through at once.
    user, sub = ultra_subscriber()
    SlowStripe.entered, SlowStripe.release = threading.Event(), threading.Event()
    monkeypatch.setitem(BACKENDS, SlowStripe.name, SlowStripe)
    settings.CODING_PLANS_TOP_UP_BACKEND = SlowStripe.name
    due = sub.current_period_end
    errors: list[BaseException] = []

    def sweep():
        try:
            run_billing_sweep(now=due)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=sweep, daemon=True)
    thread.start()
    try:
        assert SlowStripe.entered.wait(TIMEOUT), "the charge never started"
        with connection.cursor() as cursor:  # a held lock fails these, it does not hang them
            cursor.execute("SET lock_timeout = '3s'")
        try:
            # subscription_exists is decided under the account lock: reached, not blocked.
            with pytest.raises(SubscriptionExists):
                purchase_plan(user=user, plan_id=PLUS, idempotency_key="k", now=due)
            grant_credits(user=user, amount_micros=7 * MICROS, actor="staff:1", now=due)
            set_auto_top_up(user=user, enabled=True, amount_micros=25 * MICROS, actor="t", now=due)
        finally:
            with connection.cursor() as cursor:
                cursor.execute("RESET lock_timeout")
        assert TopUpAttempt.objects.get().status == TopUpAttempt.Status.PENDING  # in flight
    finally:
        SlowStripe.release.set()
        thread.join(TIMEOUT)
    assert not thread.is_alive() and errors == []
    assert TopUpAttempt.objects.get().status == TopUpAttempt.Status.APPROVED
    assert ledger_state(user)[:3] == ((15 + 7 + 105) * MICROS,) * 3


CRASH_AFTER_STRIPE = """
import os, sys
from datetime import datetime
import django
django.setup()
from payments import stripe_api
real = stripe_api.charge_off_session
def charge_then_die(**kwargs):
    real(**kwargs)          # Stripe charges the card and answers...
    os._exit(137)           # ...and the worker dies before anything is recorded.
stripe_api.charge_off_session = charge_then_die
from billing.services import execute_top_up
execute_top_up(attempt_id=int(sys.argv[1]), now=datetime.fromisoformat(sys.argv[2]))
"""


class NeverRuns:
    """A backend whose charge never happens (the worker that should run it is gone)."""

    name = "test-never-runs"

    def charge(self, **kwargs) -> ChargeResult:
        return ChargeResult(approved=False, pending=True)


def test_a_crash_between_the_charge_and_the_record_is_repaired_by_the_next_sweep(
    ultra_subscriber, monkeypatch, settings, localstripe, sdk
):
    # SPEC M4: a crash between the call and the record is repaired by the next sweep, which
    # finds the PaymentIntent by its metadata: exactly one charge, exactly one grant.
    user, sub = ultra_subscriber()
    due = sub.current_period_end
    monkeypatch.setitem(BACKENDS, NeverRuns.name, NeverRuns)
    settings.CODING_PLANS_TOP_UP_BACKEND = NeverRuns.name
    run_billing_sweep(now=due)  # the attempt is recorded; its charge is left to the worker
    attempt = TopUpAttempt.objects.get()
    assert attempt.status == TopUpAttempt.Status.PENDING
    settings.CODING_PLANS_TOP_UP_BACKEND = "stripe"

    # The worker: a real process on the test database, killed right after Stripe answered.
    database = connection.settings_dict
    url = urlparse(os.environ["DATABASE_URL"])._replace(path="/" + database["NAME"]).geturl()
    env = {
        **os.environ,
        **localstripe,
        "DATABASE_URL": url,
        "DEBUG": "1",
        "CODING_PLANS_TOP_UP_BACKEND": "stripe",
        "DJANGO_SETTINGS_MODULE": "codingplans.settings",
    }
    worker = subprocess.run(
        [sys.executable, "-c", CRASH_AFTER_STRIPE, str(attempt.pk), due.isoformat()],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert worker.returncode == 137, worker.stderr[-2000:]
    (intent,) = intents_for_attempt(sdk, attempt.pk)
    assert intent["status"] == "succeeded"  # the card was charged...
    attempt.refresh_from_db()
    payment = CardPayment.objects.get(top_up_attempt=attempt)
    assert attempt.status == TopUpAttempt.Status.PENDING  # ...and nothing was recorded
    assert payment.status == CardPayment.Status.PENDING and payment.payment_intent_id is None
    assert payment.charge_started_at is not None
    assert ledger_state(user)[0] == 15 * MICROS

    # The next sweep in grace finds the PaymentIntent by its metadata and records it.
    run_billing_sweep(now=due + timedelta(hours=1))
    attempt.refresh_from_db()
    payment.refresh_from_db()
    assert attempt.status == TopUpAttempt.Status.APPROVED
    assert payment.payment_intent_id == intent["id"]
    assert len(intents_for_attempt(sdk, attempt.pk)) == 1  # never two charges
    assert LedgerEntry.objects.filter(kind=LedgerEntry.Kind.TOP_UP).count() == 1  # one grant
    assert ledger_state(user)[:3] == (120 * MICROS,) * 3
    assert run_billing_sweep(now=due + timedelta(hours=2)).counts["renewed"] == 1
