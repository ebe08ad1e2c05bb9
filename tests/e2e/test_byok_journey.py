"""Customer journey in a real browser: log in, keep a MiniMax key in BYOK (SPEC B1), and every
customer page fits a 375 px wide phone screen (SPEC U5)."""

from __future__ import annotations

import os
import re

import pytest

PHONE = {"width": 375, "height": 812}

pytestmark = pytest.mark.browser

RAW_KEY = "sk-e2e-secret-9f8e7d6c5b4a"
HINT = "…" + RAW_KEY[-4:]
SCREENSHOT = "/tmp/byok-375.png"
# Set to a folder to keep a 375 px screenshot of every page the layout test visits.
SCREENSHOT_DIR = os.environ.get("CODING_PLANS_SCREENSHOT_DIR", "")


def test_customer_adds_minimax_key_and_sees_only_its_hint(page, log_in, make_user):
    # SPEC B1: stored encrypted, shown only as a masked hint, never the raw key.
    customer = make_user(credits_usd=100)
    log_in(customer)

    page.goto("/byok/")
    assert page.locator("h1").inner_text() == "Bring your own key"
    assert "You have no provider keys yet." in page.content()

    page.select_option("select[name=provider_id]", "minimax")
    page.fill("input[name=api_key]", RAW_KEY)
    with page.expect_navigation():
        page.click("form[action='/byok/add/'] button[type=submit]")

    assert page.url.endswith("/byok/")
    card = page.locator(".card", has=page.locator("h2", has_text="MiniMax key"))
    assert card.locator(".key-hint").inner_text() == HINT
    assert card.get_by_text("Enabled").is_visible()
    assert "Key saved" in page.locator(".messages").inner_text()
    assert RAW_KEY not in page.content()
    # Nor any longer part of it than the hint (the hint is the last four characters only).
    assert RAW_KEY[-5:] not in page.content()

    # A fresh load of the page, and the API the page's data also feeds, show the same hint.
    page.goto("/byok/")
    assert RAW_KEY not in page.content()
    api = page.request.get("/api/v1/byok")
    assert api.ok
    assert RAW_KEY not in api.text()
    assert [k["key_hint"] for k in api.json()["keys"]] == [HINT]


@pytest.mark.parametrize("path", ["/credits", "/byok", "/account/", "/subscriptions/"])
def test_customer_pages_fit_a_375px_screen(page, log_in, make_user, path):
    # SPEC U5 / DESIGN "Front end": no horizontal scrolling on a 375 px wide viewport.
    customer = make_user(credits_usd=100)
    log_in(customer)
    page.set_viewport_size(PHONE)

    response = page.goto(path)
    assert response is not None and response.ok, f"{path} answered {response and response.status}"
    scroll_width = page.evaluate("document.documentElement.scrollWidth")
    if SCREENSHOT_DIR:
        name = re.sub(r"[^a-z]+", "-", path).strip("-")
        page.screenshot(path=f"{SCREENSHOT_DIR}/{name}-375.png", full_page=True)
    assert scroll_width <= PHONE["width"], f"{path} overflows: {scroll_width}px wide at 375px"


def test_byok_page_with_a_key_fits_375px(page, log_in, make_user):
    # The fullest BYOK page (a key card with its actions, the add form), screenshotted for review.
    customer = make_user(credits_usd=100)
    log_in(customer)
    page.set_viewport_size(PHONE)
    page.goto("/byok/")
    page.fill("input[name=api_key]", RAW_KEY)
    with page.expect_navigation():
        page.click("form[action='/byok/add/'] button[type=submit]")
    page.locator("details summary").click()  # open "Replace key" as well

    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    page.screenshot(path=SCREENSHOT, full_page=True)
