"""The customer's journeys in a real browser: buy a plan (SPEC P1, P6, P7, U1, U2, B2), the
sold-out path with "Notify me" (C3, U6), and cancelling from the detail page (L5, U3)."""

from __future__ import annotations

import re

import pytest

from byok.models import ByokKey
from subscriptions.models import AvailabilityIntent, Subscription

pytestmark = pytest.mark.browser

PLUS = "minimax-token-plan-plus"


@pytest.fixture(autouse=True)
def purchase_ui_on(settings):
    settings.CODING_PLANS_PURCHASE_ENABLED = True  # SPEC C4: the UI is flag-gated


def test_customer_buys_plus_and_sees_it_active_and_installed(page, log_in, make_user, stock):
    (credential_key,) = stock(PLUS)
    customer = make_user(credits_usd=100)
    log_in(customer)
    page.goto("/subscriptions/")
    card = page.locator(f'article.plan-card[data-plan="{PLUS}"]')
    assert "$20.00" in card.inner_text() and "Credits" in card.inner_text()
    # The purchase asks for confirmation first (a native dialog), then charges once.
    page.once("dialog", lambda dialog: dialog.accept())
    with page.expect_navigation():
        card.get_by_role("button", name=re.compile("Subscribe")).click()

    subscription = Subscription.objects.get(user=customer)
    assert page.url.endswith(f"/subscriptions/coding-plans/{subscription.pk}/")
    text = page.locator("main").inner_text()
    for expected in ("Token Plan Plus", "Active", "$20.00", "Credits", "Next renewal"):
        assert expected in text, expected
    assert "configured MiniMax in your BYOK settings" in text  # SPEC P7 message

    page.goto("/byok/")
    byok = page.locator("main").inner_text()
    assert "Managed by your MiniMax Coding Plan" in byok
    assert credential_key[-4:] in byok  # the hint only
    assert credential_key not in page.content()
    assert ByokKey.objects.get(user=customer).subscription_id == subscription.pk


def test_sold_out_plan_offers_notify_me(page, log_in, make_user):
    customer = make_user(credits_usd=100)
    log_in(customer)
    page.goto("/subscriptions/")
    card = page.locator(f'article.plan-card[data-plan="{PLUS}"]')
    assert "Sold out" in card.inner_text()
    assert card.get_by_role("button", name=re.compile("Subscribe")).count() == 0
    with page.expect_navigation():
        card.get_by_role("button", name="Notify me when available").click()
    card = page.locator(f'article.plan-card[data-plan="{PLUS}"]')
    assert "We will e-mail you when it is available." in card.inner_text()
    assert AvailabilityIntent.objects.filter(user=customer, plan_id=PLUS).count() == 1


def test_cancel_from_detail_page_shows_paid_through_date(page, log_in, make_user, stock):
    from django.utils import timezone

    from subscriptions.purchase import purchase_plan

    stock(PLUS)
    customer = make_user(credits_usd=100)
    out = purchase_plan(user=customer, plan_id=PLUS, idempotency_key="e2e", now=timezone.now())
    subscription = Subscription.objects.get(pk=out.subscription_id)
    paid_through = subscription.current_period_end.strftime("%Y-%m-%d %H:%M")

    log_in(customer)
    page.goto(f"/subscriptions/coding-plans/{subscription.pk}/")
    with page.expect_navigation():
        page.get_by_role("link", name=re.compile("Cancel plan")).click()
    confirmation = page.locator("#cancel-confirmation")
    # SPEC U3: the paid-through date (in the page's <time> datetime), the unchanged entry rule,
    # revocation when access ends.
    assert (
        confirmation.locator("time")
        .get_attribute("datetime")
        .startswith(subscription.current_period_end.strftime("%Y-%m-%d"))
    )
    text = confirmation.inner_text()
    assert "only if it is unchanged" in text and "revoked when access ends" in text
    with page.expect_navigation():
        page.get_by_role("button", name="Cancel at period end").click()

    banner = page.locator("#cancel-pending-banner")
    assert "Access continues until" in banner.inner_text()
    assert banner.locator("time").get_attribute("datetime").startswith(paid_through[:10])
    subscription.refresh_from_db()
    assert subscription.cancel_at_period_end and subscription.status == "active"
