"""Canary (SPEC S1, M7): the Stripe secret key and the webhook secret never appear in pages,
API answers, logs, the admin or e-mails, through a whole payment journey."""

from __future__ import annotations

import logging

import httpx
import pytest
from django.core import mail
from django.test import Client

from tests.payments.conftest import (
    api_client,
    event_for,
    new_card,
    pay,
    post_event,
    signature_header,
)


@pytest.mark.django_db(transaction=True)
def test_stripe_secrets_never_leave_the_server(make_user, localstripe, sdk, caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="stripe")
    secrets = [localstripe["STRIPE_SECRET_KEY"], localstripe["STRIPE_WEBHOOK_SECRET"]]
    seen: list[str] = []

    user = make_user()
    client = api_client(user)
    pm = new_card(client, localstripe)
    seen.append(pay(client, "25.00", payment_method_id=pm, save_card=True).content.decode())
    seen.append(pay(client, "3", payment_method_id=pm).content.decode())  # refused amount
    declined_pm = new_card(client, localstripe, "4000000000000341")
    seen.append(pay(client, "25.00", payment_method_id=declined_pm).content.decode())
    auth_pm = new_card(client, localstripe, "4000002760003184")
    needs_auth = pay(client, "40.00", payment_method_id=auth_pm).json()
    intent_id = needs_auth["client_secret"].split("_secret_")[0]
    httpx.post(
        f"{localstripe['STRIPE_API_BASE']}/v1/payment_intents/{intent_id}/_authenticate",
        params={"success": "true"},
        json={
            "key": localstripe["STRIPE_PUBLISHABLE_KEY"],
            "client_secret": needs_auth["client_secret"],
        },
        timeout=10,
    )
    payload = event_for(sdk, "payment_intent.succeeded", intent_id)
    seen.append(post_event(Client(), payload, "t=1,v1=bad").content.decode())
    seen.append(
        post_event(Client(), payload, signature_header(payload, secrets[1])).content.decode()
    )
    for path in ("/api/v1/credits/payments", "/api/v1/credits/payment-method", "/api/v1/credits"):
        seen.append(client.get(path).content.decode())

    page = Client()
    page.force_login(user)
    for path in (
        "/credits/",
        f"/credits/payments/{needs_auth['payment']['id']}/confirm/",
        "/account/",
        "/account/delete/",
    ):
        response = page.get(path)
        assert response.status_code == 200, path
        seen.append(response.content.decode())
        seen.append(response.get("Content-Security-Policy", ""))

    staff = Client()
    staff.force_login(make_user(is_staff=True, is_superuser=True))
    for path in (
        "/admin/payments/cardpayment/",
        "/admin/payments/stripecustomer/",
        "/admin/payments/webhookevent/",
        "/admin/adminops/auditevent/",
        "/admin/billing/ledgerentry/",
    ):
        response = staff.get(path)
        assert response.status_code in (200, 404), path
        seen.append(response.content.decode())
    for message in mail.outbox:
        seen.extend([message.subject, message.body, *[a[0] for a in message.alternatives]])
    assert any("Receipt" in m.subject for m in mail.outbox)
    seen.append(caplog.text)
    seen.extend(str(r.__dict__) for r in caplog.records)

    text = "\n".join(seen)
    for secret in secrets:
        assert secret not in text
    # Client secrets are for Stripe.js on the customer's own page only, never the logs.
    assert needs_auth["client_secret"] not in caplog.text
