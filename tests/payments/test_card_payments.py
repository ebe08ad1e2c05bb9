"""Paying by card through Stripe (SPEC M1, M2, M3, M9, 11.1) against the embedded localstripe.

Real HTTP all the way: our API → the `stripe` SDK → localstripe, and localstripe's signed
events → our webhook.
"""

from __future__ import annotations

import threading

import httpx
import pytest
from django.core import mail
from django.test import Client
from django.utils import timezone

from billing.models import CreditAccount
from payments.models import CardPayment, WebhookEvent
from payments.services import refresh_payment
from tests.payments.conftest import (
    api_client,
    card_entries,
    event_for,
    new_card,
    pay,
    post_event,
    signature_header,
    wait_for,
)

MICROS = 1_000_000


def balance(user) -> int:
    return CreditAccount.objects.get(user=user).balance_micros


@pytest.mark.django_db(transaction=True)
def test_25_dollars_with_4242_grants_once_whatever_the_webhook_and_the_check_do(
    make_user, localstripe, sdk
):
    # SPEC M1: SetupIntent → PaymentIntent created and confirmed in one call → granted at once.
    user = make_user(credits_usd=10)
    client = api_client(user)
    pm = new_card(client, localstripe)
    response = pay(client, "25.00", payment_method_id=pm)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["client_secret"] is None
    payment = body["payment"]
    assert payment["status"] == "succeeded"
    assert payment["amount_usd"] == "25.00"
    assert payment["refunded_usd"] == "0.00"
    assert payment["failure_code"] is None
    assert payment["succeeded_at"]
    assert balance(user) == 35 * MICROS
    [entry] = card_entries(user)
    assert entry.amount_micros == 25 * MICROS

    # SPEC M2: the same signed event delivered 8 times at once, then the return page's check:
    # still exactly one entry.
    row = CardPayment.objects.get(pk=payment["id"])
    payload = event_for(sdk, "payment_intent.succeeded", row.payment_intent_id)
    header = signature_header(payload, localstripe["STRIPE_WEBHOOK_SECRET"])
    statuses: list[int] = []
    barrier = threading.Barrier(8)

    def deliver():
        barrier.wait()
        statuses.append(post_event(Client(), payload, header).status_code)

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 8
    assert WebhookEvent.objects.filter(object_id=row.payment_intent_id).count() == 1
    refresh_payment(user=user, payment_id=row.pk, actor="system:test", now=timezone.now())
    page = Client()
    page.force_login(user)
    assert page.post(f"/credits/payments/{row.pk}/confirm/").status_code == 302
    assert len(card_entries(user)) == 1
    assert balance(user) == 35 * MICROS

    # SPEC M9: one receipt, with the amount and the balance after.
    receipts = [m for m in mail.outbox if "Receipt" in m.subject]
    assert len(receipts) == 1
    assert receipts[0].to == [user.email]
    assert "$25.00" in receipts[0].body and "$35.00" in receipts[0].body

    # SPEC M3: a card the customer did not ask to save is detached after the payment.
    assert sdk.v1.payment_methods.retrieve(pm).customer is None
    assert client.get("/api/v1/credits/payment-method").json() == {"card": None}


@pytest.mark.django_db(transaction=True)
def test_card_declined_when_charged_is_402_and_the_payment_failed_with_its_code(
    make_user, localstripe, sdk
):
    # SPEC M1: 4000 0000 0000 0341 is saved fine and declined when charged.
    user = make_user(credits_usd=10)
    client = api_client(user)
    pm = new_card(client, localstripe, "4000000000000341")
    response = pay(client, "50", payment_method_id=pm, save_card=True)
    assert response.status_code == 402
    error = response.json()["error"]
    assert error["code"] == "card_declined"
    assert "declined" in error["message"]
    payment = CardPayment.objects.get(user=user)
    assert payment.status == "failed"
    assert payment.failure_code == "card_declined"
    assert balance(user) == 10 * MICROS
    assert card_entries(user) == []
    listed = client.get("/api/v1/credits/payments").json()["payments"]
    assert [(p["status"], p["failure_code"]) for p in listed] == [("failed", "card_declined")]
    # A declined card is not kept, even when the customer asked to save it (SPEC M3).
    assert sdk.v1.payment_methods.retrieve(pm).customer is None
    assert client.get("/api/v1/credits/payment-method").json() == {"card": None}


@pytest.mark.django_db(transaction=True)
def test_card_needing_authentication_is_granted_once_by_the_webhook(
    make_user, localstripe, sdk, webhook_to_live_server
):
    # SPEC M1, M2: 4000 0027 6000 3184 → requires_action with the client secret; Stripe.js
    # completes it (here localstripe's `_authenticate`, what its confirmCardPayment calls) and
    # the signed webhook grants, once.
    user = make_user()
    client = api_client(user)
    pm = new_card(client, localstripe, "4000002760003184")
    response = pay(client, "40.00", payment_method_id=pm)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["payment"]["status"] == "requires_action"
    secret = body["client_secret"]
    assert secret and "_secret_" in secret
    payment_id = body["payment"]["id"]
    assert client.get(f"/api/v1/credits/payments/{payment_id}").json()["status"] == (
        "requires_action"
    )
    assert card_entries(user) == []

    intent_id = secret.split("_secret_")[0]
    done = httpx.post(
        f"{localstripe['STRIPE_API_BASE']}/v1/payment_intents/{intent_id}/_authenticate",
        params={"success": "true"},
        json={"key": localstripe["STRIPE_PUBLISHABLE_KEY"], "client_secret": secret},
        timeout=10,
    )
    assert done.status_code == 200 and done.json()["status"] == "succeeded"
    wait_for(lambda: CardPayment.objects.get(pk=payment_id).status == "succeeded")
    event = WebhookEvent.objects.get(type="payment_intent.succeeded", object_id=intent_id)
    assert event.outcome == "granted"
    assert [e.amount_micros for e in card_entries(user)] == [40 * MICROS]
    # The page's check afterwards changes nothing.
    page = Client()
    page.force_login(user)
    page.post(f"/credits/payments/{payment_id}/confirm/")
    assert len(card_entries(user)) == 1
    assert balance(user) == 40 * MICROS


@pytest.mark.parametrize(
    "amount",
    [
        "4.99",
        "1000.01",
        "10.001",
        "25.005",
        "-25",
        "0",
        "ten",
        "1e3",
        "25,00",
        "",
        25.5,
        True,
        None,
        5000,
        "  ",
        "0x10",
    ],
)
def test_bad_amounts_are_invalid_amount_and_no_payment_intent_is_created(
    make_user, localstripe, sdk, amount
):
    # SPEC M1: $5 to $1,000, whole cents; anything else → 400 invalid_amount, nothing at Stripe.
    user = make_user()
    client = api_client(user)
    before = len(sdk.v1.payment_intents.list(params={"limit": 100}).data)
    response = pay(client, amount, payment_method_id="pm_card_visa")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_amount"
    assert len(sdk.v1.payment_intents.list(params={"limit": 100}).data) == before
    assert not CardPayment.objects.filter(user=user).exists()


def test_without_stripe_keys_card_payments_are_unavailable(make_user, settings):
    # SPEC M7: with no Stripe configured, card payments say they are unavailable (409).
    settings.STRIPE_SECRET_KEY = ""
    client = api_client(make_user())
    setup = client.post("/api/v1/credits/payment-method/setup")
    assert setup.status_code == 409
    assert setup.json()["error"]["code"] == "payments_unavailable"
    paid = pay(client, "25.00", payment_method_id="pm_card_visa")
    assert paid.status_code == 409
    assert paid.json()["error"]["code"] == "payments_unavailable"
    page = Client()
    page.force_login(make_user())
    assert b"Card payments are not available" in page.get("/credits/").content


def test_without_a_saved_card_or_a_new_one_it_is_no_payment_method(make_user):
    # SPEC 11.1: without payment_method_id, the saved card; none → 409 no_payment_method.
    client = api_client(make_user())
    response = pay(client, "25.00")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "no_payment_method"


def test_someone_elses_payment_method_is_refused(make_user, localstripe, sdk):
    # SPEC S2: a PaymentMethod attached to another customer cannot be charged.
    owner = api_client(make_user())
    pm = new_card(owner, localstripe)
    sdk.v1.payment_methods.attach(pm, params={"customer": sdk.v1.customers.create(params={}).id})
    response = pay(api_client(make_user()), "25.00", payment_method_id=pm)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_payment_method"


@pytest.mark.django_db(transaction=True)
def test_payments_are_listed_newest_first_with_a_cursor_and_only_to_their_owner(
    make_user, localstripe
):
    # SPEC 11.1, S2: GET /credits/payments[?cursor=], GET /credits/payments/<id>; 404 for others.
    user = make_user()
    client = api_client(user)
    pm = new_card(client, localstripe)
    ids = [pay(client, "10", payment_method_id=pm, save_card=True).json()["payment"]["id"]]
    ids += [pay(client, amount).json()["payment"]["id"] for amount in ("11", "12")]
    from payments import selectors

    first, cursor = selectors.payments_page(user, limit=2)
    assert [p.pk for p in first] == ids[::-1][:2]
    page = client.get(f"/api/v1/credits/payments?cursor={cursor}").json()
    assert [p["id"] for p in page["payments"]] == [ids[0]]
    assert page["next_cursor"] is None
    listed = client.get("/api/v1/credits/payments").json()
    assert [p["amount_usd"] for p in listed["payments"]] == ["12.00", "11.00", "10.00"]
    assert client.get("/api/v1/credits/payments?cursor=abc").status_code == 400
    other = api_client(make_user())
    assert other.get(f"/api/v1/credits/payments/{ids[0]}").status_code == 404
    assert client.get(f"/api/v1/credits/payments/{ids[0]}").json()["status"] == "succeeded"
