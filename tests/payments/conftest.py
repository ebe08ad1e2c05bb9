"""Card-payment fixtures: the embedded localstripe over real HTTP, driven through the official
`stripe` SDK and the same requests Stripe.js makes. Nothing of Stripe or of ours is mocked.

`make test` starts localstripe (codingplans/devenv.py) and passes its STRIPE_* settings; run
without it, a private one is started for the session.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time

import httpx
import pytest
import stripe
from django.conf import settings as django_settings
from django.test import Client
from django.utils import timezone

from accounts.tokens import create_api_token
from billing.models import LedgerEntry
from codingplans.devenv import embedded_localstripe, register_localstripe_webhook

WEBHOOK_PATH = "/api/v1/payments/stripe/webhook"
DEAD_URL = "http://127.0.0.1:9/nowhere"  # the discard port: nothing listens


@pytest.fixture(scope="session")
def localstripe():
    """{STRIPE_API_BASE, STRIPE_JS_URL, STRIPE_*_KEY, STRIPE_WEBHOOK_SECRET} of a running
    localstripe."""
    base = os.environ.get("STRIPE_API_BASE", "")
    if base.startswith("http://127.0.0.1") and django_settings.STRIPE_SECRET_KEY:
        yield {
            "STRIPE_API_BASE": base,
            "STRIPE_JS_URL": django_settings.STRIPE_JS_URL,
            "STRIPE_SECRET_KEY": django_settings.STRIPE_SECRET_KEY,
            "STRIPE_PUBLISHABLE_KEY": django_settings.STRIPE_PUBLISHABLE_KEY,
            "STRIPE_WEBHOOK_SECRET": django_settings.STRIPE_WEBHOOK_SECRET,
        }
        return
    with embedded_localstripe() as config:
        yield config


@pytest.fixture(autouse=True)
def stripe_settings(localstripe, settings):
    for name, value in localstripe.items():
        setattr(settings, name, value)
    return localstripe


@pytest.fixture
def sdk(localstripe) -> stripe.StripeClient:
    """The official SDK against localstripe, for looking at what our code did there."""
    return stripe.StripeClient(
        localstripe["STRIPE_SECRET_KEY"],
        base_addresses={"api": localstripe["STRIPE_API_BASE"]},
        max_network_retries=0,
    )


def api_client(user) -> Client:
    token = create_api_token(user=user, now=timezone.now()).plaintext
    return Client(HTTP_AUTHORIZATION=f"Bearer {token}")


def new_card(client: Client, localstripe: dict, number: str = "4242424242424242") -> str:
    """What Stripe.js does with the card Element (localstripe's `confirmCardSetup`): ask our
    API for a SetupIntent, confirm it at Stripe with the publishable key and the card, and
    return the PaymentMethod id it yields. The card number never reaches our server."""
    response = client.post("/api/v1/credits/payment-method/setup")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["publishable_key"] == localstripe["STRIPE_PUBLISHABLE_KEY"]
    secret = body["client_secret"]
    setup_id = secret.split("_secret_")[0]
    confirmed = httpx.post(
        f"{localstripe['STRIPE_API_BASE']}/v1/setup_intents/{setup_id}/confirm",
        json={
            "key": body["publishable_key"],
            "use_stripe_sdk": True,
            "client_secret": secret,
            "payment_method_data": {
                "type": "card",
                "card": {"number": number, "exp_month": "12", "exp_year": "2030", "cvc": "123"},
                "billing_details": {"address": {"postal_code": "10001"}},
            },
        },
        timeout=10,
    )
    assert confirmed.status_code == 200, confirmed.text
    return confirmed.json()["payment_method"]


def pay(client: Client, amount="25.00", **body):
    return client.post(
        "/api/v1/credits/payments",
        data=json.dumps({"amount_usd": amount, "save_card": False, **body}),
        content_type="application/json",
    )


def card_entries(user) -> list[LedgerEntry]:
    return list(LedgerEntry.objects.filter(account__user=user, kind="card_payment"))


def signature_header(payload: str, secret: str, timestamp: int | None = None) -> str:
    """Stripe's `Stripe-Signature` header, computed as Stripe computes it."""
    stamp = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{stamp}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={stamp},v1={mac}"


def event_for(sdk: stripe.StripeClient, event_type: str, intent_id: str) -> str:
    """The JSON of the event localstripe made for a PaymentIntent, as Stripe would send it."""
    events = sdk.v1.events.list(params={"type": event_type, "limit": 100})
    for event in events.auto_paging_iter():
        data = event.to_dict()
        if data["data"]["object"]["id"] == intent_id:
            return json.dumps(data)
    raise AssertionError(f"no {event_type} event for {intent_id}")


def post_event(client: Client, payload: str, header: str | None):
    extra = {} if header is None else {"HTTP_STRIPE_SIGNATURE": header}
    return client.post(WEBHOOK_PATH, data=payload, content_type="application/json", **extra)


@pytest.fixture
def webhook_to_live_server(live_server, localstripe):
    """localstripe sends its signed events to this test's live server; afterwards nowhere."""
    base = localstripe["STRIPE_API_BASE"]
    secret = localstripe["STRIPE_WEBHOOK_SECRET"]
    register_localstripe_webhook(base, "tests", live_server.url + WEBHOOK_PATH, secret)
    yield live_server
    register_localstripe_webhook(base, "tests", DEAD_URL, secret)


def wait_for(predicate, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out waiting")
