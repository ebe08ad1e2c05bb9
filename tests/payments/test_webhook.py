"""The Stripe webhook (SPEC M2, 11.1): verified by the SDK with STRIPE_WEBHOOK_SECRET and a
5-minute tolerance; a bad, missing or expired signature → 400 and nothing changes; events it
does not handle → 200; each event id processed once."""

from __future__ import annotations

import json
import time

import pytest
from django.test import Client

from billing.models import CreditAccount
from payments.models import CardPayment, WebhookEvent
from tests.payments.conftest import (
    api_client,
    card_entries,
    event_for,
    new_card,
    pay,
    post_event,
    signature_header,
)


@pytest.fixture
def pending_success(make_user, localstripe, sdk):
    """A payment left `requires_action` and then authenticated at Stripe, so the signed
    `payment_intent.succeeded` event is the thing that would grant it."""
    import httpx

    user = make_user()
    client = api_client(user)
    pm = new_card(client, localstripe, "4000002760003184")
    body = pay(client, "30.00", payment_method_id=pm).json()
    secret = body["client_secret"]
    intent_id = secret.split("_secret_")[0]
    httpx.post(
        f"{localstripe['STRIPE_API_BASE']}/v1/payment_intents/{intent_id}/_authenticate",
        params={"success": "true"},
        json={"key": localstripe["STRIPE_PUBLISHABLE_KEY"], "client_secret": secret},
        timeout=10,
    ).raise_for_status()
    payload = event_for(sdk, "payment_intent.succeeded", intent_id)
    return user, CardPayment.objects.get(pk=body["payment"]["id"]), payload


def _unchanged(user, payment):
    payment.refresh_from_db()
    assert payment.status == "requires_action"
    assert card_entries(user) == []
    assert CreditAccount.objects.get(user=user).balance_micros == 0
    assert not WebhookEvent.objects.filter(object_id=payment.payment_intent_id).exists()


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(lambda p, s: signature_header(p, "whsec_not_ours"), id="wrong-secret"),
        pytest.param(lambda p, s: signature_header(p + " ", s), id="tampered-payload"),
        pytest.param(lambda p, s: None, id="missing"),
        pytest.param(lambda p, s: "", id="empty"),
        pytest.param(lambda p, s: "t=abc,v1=zzz", id="garbage"),
        pytest.param(
            lambda p, s: signature_header(p, s, int(time.time()) - 301), id="expired-5-minutes"
        ),
    ],
)
def test_bad_or_missing_signature_is_400_and_nothing_changes(pending_success, localstripe, header):
    # SPEC M2: a bad or missing signature → 400 and nothing changes.
    user, payment, payload = pending_success
    response = post_event(Client(), payload, header(payload, localstripe["STRIPE_WEBHOOK_SECRET"]))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_signature"
    _unchanged(user, payment)


def test_signed_event_within_tolerance_grants_and_a_replay_is_a_duplicate(
    pending_success, localstripe
):
    # SPEC M2: four minutes old is inside the tolerance; the same event id again changes nothing.
    user, _payment, payload = pending_success
    secret = localstripe["STRIPE_WEBHOOK_SECRET"]
    first = post_event(Client(), payload, signature_header(payload, secret, int(time.time()) - 240))
    assert first.status_code == 200
    assert first.json()["outcome"] == "granted"
    again = post_event(Client(), payload, signature_header(payload, secret))
    assert again.status_code == 200
    assert again.json()["outcome"] == "duplicate"
    assert [e.amount_micros for e in card_entries(user)] == [30_000_000]


def test_a_stale_failure_after_a_success_does_not_undo_it(pending_success, localstripe):
    # SPEC M2: out-of-order deliveries never move a succeeded payment back.
    user, payment, payload = pending_success
    secret = localstripe["STRIPE_WEBHOOK_SECRET"]
    post_event(Client(), payload, signature_header(payload, secret))
    event = json.loads(payload)
    event["id"] = event["id"] + "_late"
    event["type"] = "payment_intent.payment_failed"
    event["data"]["object"]["status"] = "requires_payment_method"
    event["data"]["object"]["last_payment_error"] = {"code": "card_declined"}
    late = json.dumps(event)
    response = post_event(Client(), late, signature_header(late, secret))
    assert response.status_code == 200
    assert response.json()["outcome"] == "no_change"
    payment.refresh_from_db()
    assert payment.status == "succeeded"
    assert len(card_entries(user)) == 1


@pytest.mark.parametrize("event_type", ["customer.created", "invoice.paid", "charge.refunded"])
def test_events_it_does_not_act_on_are_200(db, localstripe, event_type):
    # SPEC 11.1: 200 for events it ignores.
    payload = json.dumps(
        {
            "id": f"evt_test_{event_type}",
            "object": "event",
            "type": event_type,
            "data": {"object": {"id": "obj_1", "object": "thing"}},
        }
    )
    response = post_event(
        Client(), payload, signature_header(payload, localstripe["STRIPE_WEBHOOK_SECRET"])
    )
    assert response.status_code == 200
    recorded = WebhookEvent.objects.get(event_id=f"evt_test_{event_type}")
    # A `charge.refunded` whose object is no charge is not acted on either (SPEC M5 settles
    # refunds from real charge and refund objects: tests/payments/test_refunds.py).
    assert recorded.outcome == "ignored"


def test_an_event_for_someone_elses_payment_intent_changes_nothing(db, localstripe, make_user):
    # A signed event for a PaymentIntent we did not make (or whose metadata names a payment of
    # another user) is answered 200 and credits nobody.
    user = make_user()
    payload = json.dumps(
        {
            "id": "evt_test_foreign",
            "object": "event",
            "type": "payment_intent.succeeded",
            "data": {
                "object": {
                    "id": "pi_foreign",
                    "object": "payment_intent",
                    "amount": 2500,
                    "currency": "usd",
                    "status": "succeeded",
                    "metadata": {"payment_id": "999999", "user_id": str(user.pk)},
                }
            },
        }
    )
    response = post_event(
        Client(), payload, signature_header(payload, localstripe["STRIPE_WEBHOOK_SECRET"])
    )
    assert response.status_code == 200
    assert response.json()["outcome"] == "not_ours"
    assert card_entries(user) == []
