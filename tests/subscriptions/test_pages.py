"""Subscription Center pages (SPEC U1, U2, U5, U6, C4, P7)."""

import re

import pytest

from subscriptions.models import Subscription

pytestmark = pytest.mark.django_db


def _buy(client, plan_id="minimax-token-plan-plus"):
    page = client.get("/subscriptions/")
    key = re.search(
        rf'name="plan_id" value="{plan_id}">\s*'
        r'<input type="hidden" name="idempotency_key" value="([^"]+)"',
        page.content.decode(),
    ).group(1)
    return client.post(
        "/subscriptions/coding-plans/purchase/", {"plan_id": plan_id, "idempotency_key": key}
    ), key


def test_purchase_ui_hidden_unless_flag_enabled(logged_in, settings, stock):
    # SPEC C4: the customer purchase UI is shown only with the flag.
    stock()
    settings.CODING_PLANS_PURCHASE_ENABLED = False
    page = logged_in.get("/subscriptions/").content.decode()
    assert "Subscribe for" not in page
    r = logged_in.post(
        "/subscriptions/coding-plans/purchase/",
        {"plan_id": "minimax-token-plan-plus", "idempotency_key": "x"},
    )
    assert r.status_code == 404
    assert not Subscription.objects.exists()


def test_buy_from_page_then_detail_shows_plan(logged_in, settings, stock, customer):
    # SPEC P1, U1, U2, P7
    settings.CODING_PLANS_PURCHASE_ENABLED = True
    stock()
    page = logged_in.get("/subscriptions/").content.decode()
    assert "configures MiniMax in your" in page and "delete it first" in page
    r, key = _buy(logged_in)
    assert r.status_code == 302
    sub = Subscription.objects.get(user=customer)
    assert r["Location"] == f"/subscriptions/coding-plans/{sub.pk}/"
    # Resubmitting the same rendered form replays: still one subscription, one charge.
    again = logged_in.post(
        "/subscriptions/coding-plans/purchase/",
        {"plan_id": "minimax-token-plan-plus", "idempotency_key": key},
    )
    assert again.status_code == 302 and Subscription.objects.count() == 1
    detail = logged_in.get(r["Location"]).content.decode()
    for text in (
        "MiniMax",
        "Token Plan Plus",
        "Active",
        "$20.00",
        "Credits",
        "Next renewal",
        "/byok/",
        "gateway",
    ):
        assert text in detail, text
    assert detail.count('class="charge-row"') == 1


def test_sold_out_shows_notify_me_and_saves_intent(logged_in, settings):
    # SPEC C3, U1, U6
    settings.CODING_PLANS_PURCHASE_ENABLED = True
    page = logged_in.get("/subscriptions/").content.decode()
    assert "Sold out" in page and "Notify me when available" in page
    r = logged_in.post("/subscriptions/coding-plans/plans/minimax-token-plan-max/notify/")
    assert r.status_code == 302
    page = logged_in.get("/subscriptions/").content.decode()
    assert "We will e-mail you when it is available." in page


def test_other_users_subscription_is_404(logged_in, make_user, stock, settings):
    # SPEC U5
    from django.utils import timezone

    from subscriptions.purchase import purchase_plan

    stock()
    other = make_user(credits_usd=50)
    outcome = purchase_plan(
        user=other, plan_id="minimax-token-plan-plus", idempotency_key="o", now=timezone.now()
    )
    assert (
        logged_in.get(f"/subscriptions/coding-plans/{outcome.subscription_id}/").status_code == 404
    )


def test_purchase_error_is_specific(logged_in, settings, stock, make_user):
    # SPEC P5: the page tells the cause.
    settings.CODING_PLANS_PURCHASE_ENABLED = True
    stock()
    from django.test import Client

    poor = make_user(credits_usd=5)
    client = Client()
    client.force_login(poor)
    r, _ = _buy(client)
    assert r.status_code == 402
    assert "credit balance is too low" in r.content.decode()
