"""Adding credits by card in a real browser at 375 px (SPEC M1, M3, M9): the card Element is
the one localstripe's Stripe.js serves, the SetupIntent is confirmed by that script, and the
server charges the PaymentMethod it yields."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings

from billing.models import CreditAccount
from payments.models import CardPayment

pytestmark = pytest.mark.browser

PHONE = {"width": 375, "height": 812}
SCREENSHOTS = Path(settings.BASE_DIR) / ".local" / "screenshots"  # git-ignored


@pytest.fixture
def phone(browser, live_server):
    context = browser.new_context(base_url=live_server.url, viewport=PHONE)
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _log_in(page, user):
    page.goto("/accounts/login/")
    page.fill("input[name=username]", user.email)
    page.fill("input[name=password]", "pw-Secret-123!")
    with page.expect_navigation():
        page.click("main form button[type=submit]")


def test_customer_adds_25_dollars_with_the_test_card_on_a_phone(phone, make_user):
    assert settings.STRIPE_JS_URL.startswith("http://127.0.0.1"), "make test's localstripe"
    customer = make_user(credits_usd=10)
    _log_in(phone, customer)
    phone.goto("/credits/")
    assert phone.locator("#balance").inner_text() == "$10.00"
    # The page fits the phone's width (no sideways scrolling).
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]

    phone.check("input[name=amount][value='25']")
    element = phone.locator("#card-element")
    element.locator("input[placeholder=number]").fill("4242424242424242")
    element.locator("input[placeholder=exp_month]").fill("12")
    element.locator("input[placeholder=exp_year]").fill("30")
    element.locator("input[placeholder=cvc]").fill("123")
    element.locator("input[placeholder=postal_code]").fill("10001")
    phone.check("input[name=save_card]")
    with phone.expect_navigation(url="**/credits/"):
        phone.click("#pay-button")

    assert phone.locator("#balance").inner_text() == "$35.00"
    messages = phone.locator(".messages").inner_text()
    assert "Payment succeeded: $25.00 added. Your balance is now $35.00." in messages
    assert "ending 4242" in phone.locator("#saved-card-details").inner_text()
    assert "Succeeded" in phone.locator("#card-payments-table").inner_text()
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    phone.screenshot(path=str(SCREENSHOTS / "add-credits-375.png"), full_page=True)

    payment = CardPayment.objects.get(user=customer)
    assert payment.status == "succeeded"
    assert CreditAccount.objects.get(user=customer).balance_micros == 35_000_000
    assert "4242424242424242" not in phone.content()
