"""The saved card (SPEC M3, 11.1): saved when asked, shown as brand / last 4 / expiry on the
page and the API, charged without re-entry, removed (detached at Stripe)."""

from __future__ import annotations

import pytest
from django.test import Client

from billing.models import CreditAccount
from payments.models import StripeCustomer
from tests.payments.conftest import api_client, new_card, pay


@pytest.mark.django_db(transaction=True)
def test_save_see_charge_and_remove_the_card(make_user, localstripe, sdk):
    user = make_user()
    client = api_client(user)
    pm = new_card(client, localstripe)
    first = pay(client, "10.00", payment_method_id=pm, save_card=True)
    assert first.status_code == 201, first.content

    # Shown: brand, last 4, expiry; attached and the default at Stripe.
    assert client.get("/api/v1/credits/payment-method").json() == {
        "card": {"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2030}
    }
    customer = StripeCustomer.objects.get(user=user)
    assert sdk.v1.payment_methods.retrieve(pm).customer == customer.customer_id
    stripe_customer = sdk.v1.customers.retrieve(customer.customer_id)
    assert stripe_customer.invoice_settings.default_payment_method == pm
    page = Client()
    page.force_login(user)
    html = page.get("/credits/").content.decode()
    assert "ending <strong>4242</strong>" in html and "12/2030" in html
    assert "4242424242424242" not in html  # the number never reaches us (SPEC M3)

    # Charged again without entering the card.
    again = pay(client, "15.00")
    assert again.status_code == 201 and again.json()["payment"]["status"] == "succeeded"
    assert CreditAccount.objects.get(user=user).balance_micros == 25_000_000
    assert sdk.v1.payment_methods.retrieve(pm).customer == customer.customer_id

    # Removed: detached at Stripe, gone from the page and the API; paying needs a card again.
    assert client.delete("/api/v1/credits/payment-method").status_code == 204
    assert sdk.v1.payment_methods.retrieve(pm).customer is None
    assert client.get("/api/v1/credits/payment-method").json() == {"card": None}
    assert "No saved card" in page.get("/credits/").content.decode()
    assert pay(client, "15.00").json()["error"]["code"] == "no_payment_method"
    # Removing again is a no-op.
    assert client.delete("/api/v1/credits/payment-method").status_code == 204


@pytest.mark.django_db(transaction=True)
def test_a_new_saved_card_replaces_the_old_one_which_is_detached(make_user, localstripe, sdk):
    # SPEC M3: at most one default payment method per customer.
    user = make_user()
    client = api_client(user)
    old = new_card(client, localstripe)
    pay(client, "10.00", payment_method_id=old, save_card=True)
    new = new_card(client, localstripe, "5555555555554444")
    pay(client, "10.00", payment_method_id=new, save_card=True)
    assert client.get("/api/v1/credits/payment-method").json()["card"]["last4"] == "4444"
    assert sdk.v1.payment_methods.retrieve(old).customer is None


@pytest.mark.django_db(transaction=True)
def test_the_page_pays_with_the_saved_card_without_javascript(make_user, localstripe):
    # DESIGN "forms work without JavaScript": the saved-card case posts the plain form.
    user = make_user()
    client = api_client(user)
    pay(client, "10.00", payment_method_id=new_card(client, localstripe), save_card=True)
    page = Client()
    page.force_login(user)
    response = page.post(
        "/credits/pay/",
        {"amount": "custom", "amount_custom": "20.50", "card": "saved"},
        follow=True,
    )
    html = response.content.decode()
    assert "Payment succeeded: $20.50 added. Your balance is now $30.50." in html
    assert CreditAccount.objects.get(user=user).balance_micros == 30_500_000
    declined = page.post(
        "/credits/pay/", {"amount": "custom", "amount_custom": "3", "card": "saved"}, follow=True
    )
    assert "between $5.00 and $1,000.00" in declined.content.decode()
    no_js_new = page.post("/credits/pay/", {"amount": "25", "card": "new"}, follow=True)
    assert "needs JavaScript" in no_js_new.content.decode()
