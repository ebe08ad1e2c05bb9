"""The Subscription Center with both providers at 375 px (SPEC U1, U5, V2; issue 18): the
catalog grouped by provider, and a customer's MiniMax and BytePlus cards side by side; the
BytePlus detail page says usage is not reported and how to call the plan through the gateway.
Screenshots go to the git-ignored `.local/screenshots/`."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.utils import timezone

from subscriptions.models import Subscription
from subscriptions.purchase import purchase_plan

pytestmark = pytest.mark.browser

SCREENSHOTS = Path(__file__).resolve().parents[2] / ".local" / "screenshots"
PHONE = {"width": 375, "height": 812}


@pytest.fixture(autouse=True)
def purchase_ui_on(settings):
    settings.CODING_PLANS_PURCHASE_ENABLED = True


def test_subscription_center_at_375px_with_both_providers(page, log_in, make_user, stock):
    for plan_id in (
        "minimax-token-plan-plus",
        "byteplus-coding-plan-pro",
        "byteplus-coding-plan-lite",
    ):
        stock(plan_id)
    customer = make_user(credits_usd=200)
    for n, plan_id in enumerate(("minimax-token-plan-plus", "byteplus-coding-plan-pro")):
        purchase_plan(
            user=customer, plan_id=plan_id, idempotency_key=f"e2e-{n}", now=timezone.now()
        )
    page.set_viewport_size(PHONE)
    log_in(customer)
    page.goto("/subscriptions/")

    cards = page.locator("article.subscription-card")
    assert cards.count() == 2
    assert {cards.nth(i).get_attribute("data-provider") for i in range(2)} == {
        "minimax",
        "byteplus",
    }
    assert (
        "· BytePlus"
        in page.locator('article.subscription-card[data-provider="byteplus"]').inner_text()
    )
    groups = page.locator("section.provider-group")
    assert [groups.nth(i).get_attribute("data-provider") for i in range(groups.count())] == [
        "minimax",
        "byteplus",
    ]
    byteplus = page.locator('section.provider-group[data-provider="byteplus"]')
    assert byteplus.locator("h4").inner_text() == "BytePlus"
    assert byteplus.locator("article.plan-card").count() == 2
    assert "You already have a BytePlus plan" in byteplus.inner_text()
    # Usable at 375 px: nothing wider than the viewport.
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], width
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "subscription-center-375-providers.png"), full_page=True)

    subscription = Subscription.objects.get(user=customer, provider_id="byteplus")
    page.goto(f"/subscriptions/coding-plans/{subscription.pk}/")
    main = page.locator("main").inner_text()
    assert "BytePlus does not report usage" in main
    assert page.locator("#gateway-model-prefix").inner_text() == "byteplus/"
    assert page.locator("#gateway-base-url").inner_text().endswith("/api/v1/gateway")
    assert page.locator("#create-token-link").get_attribute("href") == "/account/#api-tokens"
    assert page.locator("#quota .progress").count() == 0  # no bars
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], width
    page.screenshot(path=str(SCREENSHOTS / "byteplus-detail-375.png"), full_page=True)
