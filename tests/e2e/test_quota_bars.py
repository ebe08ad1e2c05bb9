"""The current quota on a Coding Plan's detail page, in a real browser (SPEC U2, Q1, Q2): two
labelled progress bars with the percentages MiniMax reports for the plan's credential, and the
reset times in the viewer's local time."""

from __future__ import annotations

import pytest
from django.utils import timezone

from subscriptions.purchase import purchase_plan
from tests.e2e.conftest import DESKTOP, PASSWORD

pytestmark = pytest.mark.browser

PLAN = "minimax-token-plan-plus"
PHONE = {"width": 375, "height": 812}
# 5-hour window resets 2026-01-01 03:00 UTC, the weekly one 2026-01-05 00:00 UTC.
FIXED_TIMES = {
    "start_time": 1767218400000,
    "end_time": 1767236400000,
    "weekly_start_time": 1766966400000,
    "weekly_end_time": 1767571200000,
}


@pytest.fixture
def berlin_page(browser, live_server):
    """A page whose clock is in Berlin (UTC+1 in January), to see times shown in local time."""
    context = browser.new_context(
        base_url=live_server.url, viewport=DESKTOP, timezone_id="Europe/Berlin", locale="en-GB"
    )
    context.set_default_timeout(10_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def log_in(page, user) -> None:
    page.goto("/accounts/login/")
    page.fill("input[name=username]", user.email)
    page.fill("input[name=password]", PASSWORD)
    with page.expect_navigation():
        page.click("main form button[type=submit]")
    assert "/accounts/login/" not in page.url, "log-in failed"


def plan_with_quota(make_user, stock, standin, **profile) -> tuple[object, int, str]:
    customer = make_user(credits_usd=100)
    (credential_key,) = stock(PLAN)
    out = purchase_plan(
        user=customer, plan_id=PLAN, idempotency_key="e2e-quota", now=timezone.now()
    )
    standin.state.configure({"quota_profiles": {credential_key: profile}})
    return customer, out.subscription_id, credential_key


def test_detail_page_shows_two_labelled_quota_bars(berlin_page, make_user, stock, standin):
    page = berlin_page
    customer, sid, credential_key = plan_with_quota(
        make_user, stock, standin, short_percent=35, weekly_percent=62, overrides=FIXED_TIMES
    )
    log_in(page, customer)

    response = page.goto(f"/subscriptions/coding-plans/{sid}/")
    assert response is not None and response.ok
    quota = page.locator("#quota")
    assert quota.is_visible()
    bars = quota.get_by_role("progressbar")
    assert bars.count() == 2

    short = page.get_by_role("progressbar", name="5-hour window remaining")
    weekly = page.get_by_role("progressbar", name="Weekly window remaining")
    assert short.get_attribute("aria-valuenow") == "35"
    assert weekly.get_attribute("aria-valuenow") == "62"
    for bar in (short, weekly):
        assert bar.get_attribute("aria-valuemin") == "0"
        assert bar.get_attribute("aria-valuemax") == "100"
        assert bar.is_visible()

    # The filled part of each bar is drawn at its percentage of the bar's width.
    for bar, percent in ((short, 35), (weekly, 62)):
        outer = bar.bounding_box()
        inner = bar.locator("span").bounding_box()
        assert outer and inner
        assert abs(inner["width"] / outer["width"] - percent / 100) < 0.02

    short_window = quota.locator("[data-window=short_term]")
    weekly_window = quota.locator("[data-window=weekly]")
    assert "5-hour window" in short_window.inner_text()
    assert "35% left" in short_window.inner_text()
    assert "Weekly window" in weekly_window.inner_text()
    assert "62% left" in weekly_window.inner_text()

    # Reset times: exact instants in the markup, shown in the viewer's local time (CET).
    short_reset = short_window.locator("time")
    weekly_reset = weekly_window.locator("time")
    assert short_reset.get_attribute("datetime") == "2026-01-01T03:00:00Z"
    assert weekly_reset.get_attribute("datetime") == "2026-01-05T00:00:00Z"
    assert "Resets" in short_window.inner_text()
    assert "04:00" in short_reset.inner_text() and "2026" in short_reset.inner_text()
    assert "01:00" in weekly_reset.inner_text() and "5 Jan" in weekly_reset.inner_text()

    assert page.locator("#quota-error").count() == 0
    assert credential_key not in page.content()


def test_detail_page_with_quota_error_shows_a_notice(page, log_in, make_user, stock, standin):
    # SPEC Q2: never breaks the page.
    customer, sid, credential_key = plan_with_quota(make_user, stock, standin, status_code=1004)
    log_in(customer)
    response = page.goto(f"/subscriptions/coding-plans/{sid}/")
    assert response is not None and response.ok
    notice = page.locator("#quota-error")
    assert notice.is_visible()
    assert "not available" in notice.inner_text()
    assert page.get_by_role("progressbar").count() == 0
    assert page.locator("#billing-history").is_visible()
    assert credential_key not in page.content()


def test_detail_page_with_quota_bars_fits_375px(page, log_in, make_user, stock, standin):
    # SPEC U5: no horizontal scrolling on a phone.
    customer, sid, _ = plan_with_quota(make_user, stock, standin, short_percent=100, boost=1500)
    log_in(customer)
    page.set_viewport_size(PHONE)
    page.goto(f"/subscriptions/coding-plans/{sid}/")
    assert page.get_by_role("progressbar").count() == 2
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
