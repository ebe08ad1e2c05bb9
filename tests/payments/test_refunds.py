"""Refunds of card payments (SPEC M5, M9) against the embedded localstripe, and the admin pages
for refunds and adjustments with their permissions (SPEC M5, M6, S2).

The ledger entry `refund` and the `Refund` record are written before Stripe is called; Stripe's
answer settles the refund, and so do its refund webhooks (which localstripe never sends, SPEC
M8: the tests post them signed, as Stripe would). A refund Stripe refuses puts the credits back
(`refund_reversed`).
"""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.core import mail
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import Client
from django.utils import timezone

from adminops.models import AuditEvent
from adminops.roles import BILLING, SUPPORT
from billing.models import CreditAccount, LedgerEntry
from billing.services import adjust_credits
from codingplans.celery import app as celery_app
from payments import services
from payments.errors import (
    PaymentNotRefundable,
    RefundExceedsBalance,
    RefundExceedsPayment,
    RefundReasonRequired,
)
from payments.models import CardPayment, Refund
from tests.billing.helpers import ledger_state
from tests.lifecycle.helpers import buy
from tests.payments.conftest import api_client, new_card, pay, post_event, signature_header

pytestmark = pytest.mark.django_db(transaction=True)

MICROS = 1_000_000
TIMEOUT = 20


@pytest.fixture
def superuser(make_user):
    return make_user(is_staff=True, is_superuser=True)


@pytest.fixture
def paid(make_user, localstripe):
    """A customer who paid $25 by card (their whole balance)."""

    def make(amount: str = "25.00"):
        user = make_user()
        client = api_client(user)
        response = pay(client, amount, payment_method_id=new_card(client, localstripe))
        assert response.status_code == 201, response.content
        payment = CardPayment.objects.get(pk=response.json()["payment"]["id"])
        assert payment.status == CardPayment.Status.SUCCEEDED
        mail.outbox.clear()
        return user, payment

    return make


def staff_actor(user) -> str:
    return f"staff:{user.pk}"


def refunds_at_stripe(sdk, payment: CardPayment) -> list[dict]:
    listed = sdk.v1.refunds.list(params={"payment_intent": payment.payment_intent_id})
    return [r.to_dict() for r in listed.auto_paging_iter()]


def test_partial_refunds_accumulate_to_refunded_with_emails_and_credits_page(paid, superuser, sdk):
    # SPEC M5: whole or part; partial refunds accumulate; status partially_refunded / refunded;
    # the `refund` entry (negative); the audit event names the staff member. M9: one e-mail
    # per refund; /credits shows it.
    user, payment = paid()
    refund = services.refund_card_payment(
        payment_id=payment.pk,
        amount_micros=10 * MICROS,
        reason="Customer asked",
        actor=staff_actor(superuser),
        now=timezone.now(),
    )
    assert refund.status == Refund.Status.SUCCEEDED and refund.stripe_refund_id
    payment.refresh_from_db()
    assert payment.status == CardPayment.Status.PARTIALLY_REFUNDED
    assert payment.refunded_micros == 10 * MICROS
    entry = LedgerEntry.objects.get(kind=LedgerEntry.Kind.REFUND)
    assert entry.amount_micros == -10 * MICROS and entry.reference == f"refund:{refund.pk}"
    assert entry.actor == staff_actor(superuser) and refund.ledger_entry_id == entry.pk
    assert ledger_state(user)[:3] == (15 * MICROS,) * 3
    (at_stripe,) = refunds_at_stripe(sdk, payment)
    assert at_stripe["amount"] == 1000 and at_stripe["metadata"]["refund_id"] == str(refund.pk)
    event = AuditEvent.objects.get(event_type="refund.created")
    assert event.actor == staff_actor(superuser)
    assert event.new_values["reason"] == "Customer asked"
    (email,) = mail.outbox
    assert email.subject == "Refund: $10.00 back to your card" and email.to == [user.email]
    assert "Balance after: $15.00" in email.body

    client = api_client(user)
    body = client.get(f"/api/v1/credits/payments/{payment.pk}").json()
    assert body["status"] == "partially_refunded" and body["refunded_usd"] == "10.00"
    page = Client()
    page.force_login(user)
    html = page.get("/credits/").content.decode()
    assert "$10.00 refunded to the card" in html and "Refund to card" in html

    second = services.refund_card_payment(
        payment_id=payment.pk,
        amount_micros=15 * MICROS,
        reason="The rest",
        actor=staff_actor(superuser),
        now=timezone.now(),
    )
    assert second.status == Refund.Status.SUCCEEDED
    payment.refresh_from_db()
    assert payment.status == CardPayment.Status.REFUNDED
    assert payment.refunded_micros == 25 * MICROS
    assert ledger_state(user)[:3] == (0, 0, 0)
    assert len(mail.outbox) == 2
    # Nothing left: a third refund is refused and changes nothing.
    with pytest.raises(PaymentNotRefundable):
        services.refund_card_payment(
            payment_id=payment.pk,
            amount_micros=1 * MICROS,
            reason="More",
            actor=staff_actor(superuser),
            now=timezone.now(),
        )
    assert Refund.objects.count() == 2 and len(refunds_at_stripe(sdk, payment)) == 2


def test_refund_over_the_payment_or_over_the_balance_is_refused_and_changes_nothing(
    paid, superuser, stock, sdk
):
    # SPEC M5: amount <= the payment's unrefunded amount and <= the current balance (credits
    # already spent are not refunded); a reason is required.
    user, payment = paid()
    before = ledger_state(user)
    with pytest.raises(RefundExceedsPayment):
        services.refund_card_payment(
            payment_id=payment.pk,
            amount_micros=26 * MICROS,
            reason="Too much",
            actor="staff:1",
            now=timezone.now(),
        )
    with pytest.raises(RefundReasonRequired):
        services.refund_card_payment(
            payment_id=payment.pk,
            amount_micros=MICROS,
            reason=" ",
            actor="staff:1",
            now=timezone.now(),
        )
    stock("minimax-token-plan-plus")
    buy(user, timezone.now())  # $20 of the $25 spent on a plan
    with pytest.raises(RefundExceedsBalance) as refused:
        services.refund_card_payment(
            payment_id=payment.pk,
            amount_micros=10 * MICROS,
            reason="Spent already",
            actor="staff:1",
            now=timezone.now(),
        )
    assert "at most $5.00" in refused.value.message
    assert Refund.objects.count() == 0 and refunds_at_stripe(sdk, payment) == []
    assert not LedgerEntry.objects.filter(kind=LedgerEntry.Kind.REFUND).exists()
    assert ledger_state(user)[0] == before[0] - 20 * MICROS
    payment.refresh_from_db()
    assert payment.status == CardPayment.Status.SUCCEEDED and payment.refunded_micros == 0


def test_two_refunds_at_once_cannot_exceed_the_payment(paid, sdk):
    # SPEC M5 under concurrency: two staff members refund $15 of a $25 payment at the same
    # moment; the credit account lock serialises them and the second is refused.
    user, payment = paid()
    barrier = threading.Barrier(2)
    results: list[object] = []

    def refund():
        try:
            barrier.wait(TIMEOUT)
            results.append(
                services.refund_card_payment(
                    payment_id=payment.pk,
                    amount_micros=15 * MICROS,
                    reason="Twice",
                    actor="staff:1",
                    now=timezone.now(),
                )
            )
        except BaseException as exc:
            results.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=refund) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert sorted(type(r).__name__ for r in results) == ["Refund", "RefundExceedsPayment"]
    assert Refund.objects.count() == 1 and len(refunds_at_stripe(sdk, payment)) == 1
    assert LedgerEntry.objects.filter(kind=LedgerEntry.Kind.REFUND).count() == 1
    payment.refresh_from_db()
    assert payment.refunded_micros == 15 * MICROS
    assert ledger_state(user)[:3] == (10 * MICROS,) * 3


def test_a_refund_stripe_refuses_puts_the_credits_back(paid, sdk):
    # SPEC M5: a refund that Stripe fails puts the credits back (`refund_reversed`). Here
    # localstripe refuses it (404): the payment names a PaymentIntent it does not know, as
    # after a change of Stripe account.
    user, payment = paid()
    CardPayment.objects.filter(pk=payment.pk).update(payment_intent_id="pi_unknown_to_stripe")
    refund = services.refund_card_payment(
        payment_id=payment.pk,
        amount_micros=10 * MICROS,
        reason="Refused",
        actor="staff:1",
        now=timezone.now(),
    )
    assert refund.status == Refund.Status.FAILED and refund.failure_reason
    kinds = list(
        LedgerEntry.objects.filter(account__user=user)
        .order_by("id")
        .values_list("kind", "amount_micros")
    )
    assert kinds[-2:] == [("refund", -10 * MICROS), ("refund_reversed", 10 * MICROS)]
    assert refund.reversal_entry_id is not None
    payment.refresh_from_db()
    assert payment.status == CardPayment.Status.SUCCEEDED and payment.refunded_micros == 0
    assert ledger_state(user)[:3] == (25 * MICROS,) * 3
    assert mail.outbox == []  # no refund e-mail for a refund that did not happen
    assert AuditEvent.objects.filter(event_type="refund.failed").count() == 1


def _refund_event(event_type: str, obj: dict, n: int) -> str:
    return json.dumps(
        {
            "id": f"evt_refund_test_{n}_{obj.get('id')}",
            "object": "event",
            "type": event_type,
            "data": {"object": obj},
        }
    )


def test_refund_webhooks_settle_a_refund_stripe_did_not_answer(paid, settings, localstripe, sdk):
    # SPEC M5: `refund.updated` / `charge.refunded` settle a refund (Stripe sends them; local-
    # stripe does not, SPEC M8, so they are posted here, signed as Stripe signs them). A refund
    # whose create call got no answer stays pending with its credits taken.
    user, payment = paid()
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"  # Stripe unreachable for the create call
    refund = services.refund_card_payment(
        payment_id=payment.pk,
        amount_micros=5 * MICROS,
        reason="Webhook",
        actor="staff:1",
        now=timezone.now(),
    )
    assert refund.status == Refund.Status.PENDING and refund.stripe_refund_id is None
    assert ledger_state(user)[0] == 20 * MICROS
    settings.STRIPE_API_BASE = localstripe["STRIPE_API_BASE"]
    secret = localstripe["STRIPE_WEBHOOK_SECRET"]
    obj = {
        "id": "re_from_webhook_1",
        "object": "refund",
        "amount": 500,
        "status": "succeeded",
        "payment_intent": payment.payment_intent_id,
        "metadata": {"refund_id": str(refund.pk), "payment_id": str(payment.pk)},
    }
    payload = _refund_event("refund.updated", obj, 1)
    response = post_event(Client(), payload, signature_header(payload, secret))
    assert response.status_code == 200 and response.json()["outcome"] == "refund_succeeded"
    refund.refresh_from_db()
    assert refund.status == Refund.Status.SUCCEEDED
    assert refund.stripe_refund_id == "re_from_webhook_1"
    assert len(mail.outbox) == 1 and "$5.00" in mail.outbox[0].subject
    # Replayed, or told again through charge.refunded: nothing more.
    assert post_event(Client(), payload, signature_header(payload, secret)).json()["outcome"] == (
        "duplicate"
    )
    charge = {"id": "ch_x", "object": "charge", "refunds": {"data": [obj]}}
    payload = _refund_event("charge.refunded", charge, 2)
    assert post_event(Client(), payload, signature_header(payload, secret)).json()["outcome"] == (
        "no_change"
    )
    assert len(mail.outbox) == 1 and ledger_state(user)[:3] == (20 * MICROS,) * 3

    # A second pending refund that Stripe then fails: the webhook puts the credits back.
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"
    failing = services.refund_card_payment(
        payment_id=payment.pk,
        amount_micros=4 * MICROS,
        reason="Will fail",
        actor="staff:1",
        now=timezone.now(),
    )
    settings.STRIPE_API_BASE = localstripe["STRIPE_API_BASE"]
    failed = {
        "id": "re_from_webhook_2",
        "object": "refund",
        "status": "failed",
        "failure_reason": "expired_or_canceled_card",
        "metadata": {"refund_id": str(failing.pk)},
    }
    payload = _refund_event(
        "charge.refunded", {"object": "charge", "refunds": {"data": [failed]}}, 3
    )
    assert post_event(Client(), payload, signature_header(payload, secret)).json()["outcome"] == (
        "refund_reversed"
    )
    failing.refresh_from_db()
    assert failing.status == Refund.Status.FAILED
    assert failing.failure_reason == "expired_or_canceled_card"
    payment.refresh_from_db()
    assert payment.refunded_micros == 5 * MICROS
    assert payment.status == CardPayment.Status.PARTIALLY_REFUNDED
    assert ledger_state(user)[:3] == (20 * MICROS,) * 3


def test_a_pending_refund_is_sent_again_by_sync_when_stripe_never_got_it(
    paid, settings, localstripe, sdk
):
    # SPEC M5: no answer → pending; `sync_refund` (admin "check at Stripe") looks it up by
    # metadata and, as Stripe never got it, sends it (same idempotency key).
    _user, payment = paid()
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"
    refund = services.refund_card_payment(
        payment_id=payment.pk,
        amount_micros=5 * MICROS,
        reason="Sync",
        actor="staff:1",
        now=timezone.now(),
    )
    settings.STRIPE_API_BASE = localstripe["STRIPE_API_BASE"]
    assert refunds_at_stripe(sdk, payment) == []
    synced = services.sync_refund(refund_id=refund.pk, actor="staff:1", now=timezone.now())
    assert synced.status == Refund.Status.SUCCEEDED
    assert services.sync_refund(refund_id=refund.pk, actor="staff:1", now=timezone.now()).pk
    assert len(refunds_at_stripe(sdk, payment)) == 1 and len(mail.outbox) == 1


def test_the_hourly_task_settles_refunds_left_pending_and_leaves_fresh_ones(
    paid, settings, localstripe, sdk
):
    # SPEC M5: a refund whose answer never came (Stripe unreachable) and whose webhook never
    # comes is not left pending for ever: the beat's hourly task checks it at Stripe once it is
    # older than PENDING_REFUND_RECHECK_AFTER; a fresh one is left to its webhook.
    _user, payment = paid()
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"  # nothing listens: no answer
    old, fresh = (
        services.refund_card_payment(
            payment_id=payment.pk,
            amount_micros=5 * MICROS,
            reason=reason,
            actor="staff:1",
            now=timezone.now(),
        )
        for reason in ("Old", "Fresh")
    )
    Refund.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(minutes=31))
    # Stripe still unreachable at the hour: the old one stays pending, nothing escapes.
    counts = services.sync_pending_refunds(now=timezone.now())
    assert counts == {"checked": 1, "settled": 0, "still_pending": 0, "errors": 1}
    settings.STRIPE_API_BASE = localstripe["STRIPE_API_BASE"]
    entry = [
        e
        for e in settings.CELERY_BEAT_SCHEDULE.values()
        if e["task"] == "payments.tasks.sync_pending_refunds"
    ]
    assert len(entry) == 1 and entry[0]["schedule"].minute == {20}  # hourly
    celery_app.loader.import_default_modules()  # as a worker starts: the task is found
    counts = celery_app.tasks["payments.tasks.sync_pending_refunds"].delay().get()
    assert counts == {"checked": 1, "settled": 1, "still_pending": 0, "errors": 0}
    old.refresh_from_db()
    fresh.refresh_from_db()
    assert old.status == Refund.Status.SUCCEEDED and fresh.status == Refund.Status.PENDING
    assert len(refunds_at_stripe(sdk, payment)) == 1  # sent once, with its idempotency key
    # The next hour finds nothing more to do for it.
    assert services.sync_pending_refunds(now=timezone.now())["checked"] == 0


# --- the admin pages and who may use them (SPEC M5, M6, S2) ------------------------------------


def staff_in(make_user, role: str):
    user = make_user(is_staff=True)
    user.groups.add(Group.objects.get(name=role))
    client = Client()
    client.force_login(user)
    return user, client


def test_billing_role_refunds_from_the_admin_with_a_confirmation(make_user, paid, stock):
    # SPEC M5: "Refund" on a card payment, amount defaulting to the most M5 allows, a required
    # reason, a confirmation page with the balance before and after.
    user, payment = paid()
    stock("minimax-token-plan-plus")
    buy(user, timezone.now())  # $5 left: the most that can be refunded
    staff, client = staff_in(make_user, BILLING)
    url = f"/admin/payments/cardpayment/{payment.pk}/refund/"
    change = client.get(f"/admin/payments/cardpayment/{payment.pk}/change/").content.decode()
    assert url in change
    form = client.get(url)
    assert form.status_code == 200
    assert 'value="5.00"' in form.content.decode()  # min(unrefunded $25, balance $5)
    no_reason = client.post(url, {"amount_usd": "5.00", "reason": ""})
    assert "Give a reason" in no_reason.content.decode()
    too_much = client.post(url, {"amount_usd": "6.00", "reason": "x"})
    assert "at most $5.00" in too_much.content.decode()
    review = client.post(url, {"amount_usd": "3.00", "reason": "Goodwill"}).content.decode()
    assert 'id="balance-before">$5.00' in review and 'id="balance-after">$2.00' in review
    assert Refund.objects.count() == 0  # nothing happens before the confirmation
    done = client.post(url, {"amount_usd": "3.00", "reason": "Goodwill", "confirm": "yes"})
    assert done.status_code == 302
    refund = Refund.objects.get()
    assert refund.actor == f"staff:{staff.pk}" and refund.status == Refund.Status.SUCCEEDED
    assert ledger_state(user)[0] == 2 * MICROS


def test_billing_role_adjusts_credits_never_below_zero(make_user):
    # SPEC M6: grant or remove with a reason; removal never below zero (the form says the most
    # that can be removed); an `adjustment` entry; the audit event names the staff member.
    customer = make_user(credits_usd=10)
    account = CreditAccount.objects.get(user=customer)
    staff, client = staff_in(make_user, BILLING)
    url = f"/admin/billing/creditaccount/{account.pk}/adjust/"
    assert url in client.get(f"/admin/billing/creditaccount/{account.pk}/change/").content.decode()
    page = client.get(url).content.decode()
    assert "At most $10.00 can be removed" in page
    refused = client.post(url, {"direction": "remove", "amount_usd": "10.01", "reason": "x"})
    assert "at most $10.00 can be removed" in refused.content.decode()
    assert (
        "Give a reason"
        in client.post(
            url, {"direction": "grant", "amount_usd": "1", "reason": ""}
        ).content.decode()
    )
    assert (
        client.post(url, {"direction": "remove", "amount_usd": "4", "reason": "Typo"}).status_code
        == 302
    )
    assert (
        client.post(
            url, {"direction": "grant", "amount_usd": "2.50", "reason": "Goodwill"}
        ).status_code
        == 302
    )
    entries = LedgerEntry.objects.filter(kind=LedgerEntry.Kind.ADJUSTMENT).order_by("id")
    assert [(e.amount_micros, e.reason, e.actor) for e in entries] == [
        (-4 * MICROS, "Typo", f"staff:{staff.pk}"),
        (2_500_000, "Goodwill", f"staff:{staff.pk}"),
    ]
    events = AuditEvent.objects.filter(event_type="credits.adjusted")
    assert {e.actor for e in events} == {f"staff:{staff.pk}"} and events.count() == 2
    assert ledger_state(customer)[:3] == (8_500_000,) * 3
    # Removing everything is allowed, to exactly zero.
    adjust_credits(
        user=customer, amount_micros=-8_500_000, reason="all", actor="staff:1", now=timezone.now()
    )
    assert ledger_state(customer)[0] == 0


def test_support_role_sees_payments_but_cannot_refund_or_adjust(make_user, paid):
    # SPEC M5/M6: only the billing role (and superusers) refund or adjust; support sees
    # payments read-only (S2: 403 for the actions).
    user, payment = paid()
    account = CreditAccount.objects.get(user=user)
    _staff, client = staff_in(make_user, SUPPORT)
    assert client.get("/admin/payments/cardpayment/").status_code == 200
    detail = client.get(f"/admin/payments/cardpayment/{payment.pk}/change/")
    assert detail.status_code == 200 and 'id="refund-link"' not in detail.content.decode()
    refund_url = f"/admin/payments/cardpayment/{payment.pk}/refund/"
    adjust_url = f"/admin/billing/creditaccount/{account.pk}/adjust/"
    assert client.get(refund_url).status_code == 403
    assert (
        client.post(refund_url, {"amount_usd": "1", "reason": "x", "confirm": "yes"}).status_code
        == 403
    )
    assert client.get(adjust_url).status_code == 403
    assert (
        client.post(
            adjust_url, {"direction": "grant", "amount_usd": "1", "reason": "x"}
        ).status_code
        == 403
    )
    assert Refund.objects.count() == 0
    assert not LedgerEntry.objects.filter(kind=LedgerEntry.Kind.ADJUSTMENT).exists()


def test_a_customer_never_reaches_the_refund_or_adjustment_views(paid):
    user, payment = paid()
    account = CreditAccount.objects.get(user=user)
    client = Client()
    client.force_login(user)
    for url in (
        f"/admin/payments/cardpayment/{payment.pk}/refund/",
        f"/admin/billing/creditaccount/{account.pk}/adjust/",
    ):
        for response in (client.get(url), client.post(url, {"confirm": "yes"})):
            assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert Refund.objects.count() == 0


# --- grant_credits --actor (SPEC M6, 11.2) ---------------------------------------------------


def test_grant_credits_records_the_actor(make_user):
    customer = make_user("grantee@example.com")
    staff = make_user("ops@example.com", is_staff=True)
    make_user("notstaff@example.com")
    call_command("grant_credits", "grantee@example.com", "5", "--actor", "ops@example.com")
    call_command("grant_credits", "grantee@example.com", "1")
    actors = list(
        LedgerEntry.objects.filter(account__user=customer)
        .order_by("id")
        .values_list("actor", flat=True)
    )
    assert actors == [f"staff:{staff.pk}", "system:command"]
    for actor, message in (
        ("nobody@example.com", "no active user"),
        ("notstaff@example.com", "not a staff member"),
    ):
        with pytest.raises(CommandError, match=message):
            call_command("grant_credits", "grantee@example.com", "5", "--actor", actor)
    assert ledger_state(customer)[0] == 6 * MICROS
