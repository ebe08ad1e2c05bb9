"""The account pages in a real browser at 375 px (SPEC A1, E1; issue 19): asking for a password
reset and using its link, changing the password on /account/, turning the renewal reminder off.
And every customer e-mail's HTML, rendered by Chromium and saved as a screenshot in the
git-ignored `.local/screenshots/emails/` for review."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.core import mail

from accounts.models import User
from tests.e2e.conftest import PASSWORD

pytestmark = pytest.mark.browser

PHONE = {"width": 375, "height": 812}
NEW_PASSWORD = "Fresh-Pass-789!"
SCREENSHOTS = Path(__file__).resolve().parents[2] / ".local" / "screenshots" / "emails"


@pytest.fixture
def phone(browser, live_server):
    context = browser.new_context(base_url=live_server.url, viewport=PHONE)
    context.set_default_timeout(10_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def fits(page) -> bool:
    """Usable at 375 px: nothing wider than the viewport (no sideways scrolling)."""
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def log_in(page, email: str, password: str) -> None:
    page.goto("/accounts/login/")
    page.fill("input[name=username]", email)
    page.fill("input[name=password]", password)
    with page.expect_navigation():
        page.click("main form button[type=submit]")


def test_password_reset_request_and_link_at_375px(phone, make_user):
    user = make_user("forgot@example.com")
    phone.goto("/accounts/login/")
    with phone.expect_navigation():
        phone.get_by_role("link", name="Forgot your password?").click()
    assert fits(phone)
    phone.get_by_label("E-mail").fill(user.email)
    with phone.expect_navigation():
        phone.get_by_role("button", name="Send me a link").click()
    assert "Check your e-mail" in phone.locator("h1").inner_text() and fits(phone)

    (message,) = mail.outbox
    link = re.search(r"https?://[^\s]+/accounts/reset/[^\s]+/", message.body).group(0)
    phone.goto(link)
    assert "Choose a new password" in phone.locator("h1").inner_text() and fits(phone)
    phone.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    phone.get_by_label("New password confirmation").fill(NEW_PASSWORD)
    with phone.expect_navigation():
        phone.get_by_role("button", name="Set my password").click()
    assert "Your password was changed" in phone.locator("h1").inner_text()
    log_in(phone, user.email, NEW_PASSWORD)
    assert "/accounts/login/" not in phone.url
    # The link is used up.
    phone.goto(link)
    assert "This link no longer works" in phone.locator("h1").inner_text()


def test_password_change_and_reminder_preference_on_the_account_page_at_375px(phone, make_user):
    user = make_user("settings@example.com")
    log_in(phone, user.email, PASSWORD)
    phone.goto("/account/")
    assert fits(phone)
    form = phone.locator("#password-change-form")
    form.get_by_label("Old password").fill(PASSWORD)
    form.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    form.get_by_label("New password confirmation").fill(NEW_PASSWORD)
    with phone.expect_navigation():
        form.get_by_role("button", name="Change password").click()
    assert "Your password was changed" in phone.locator(".messages").inner_text()
    assert phone.url.endswith("/account/")  # still logged in here
    assert User.objects.get(pk=user.pk).check_password(NEW_PASSWORD)

    box = phone.get_by_label(re.compile("Remind me 3 days before a renewal"))
    assert box.is_checked()
    box.uncheck()
    with phone.expect_navigation():
        phone.get_by_role("button", name="Save preferences").click()
    assert "E-mail preferences saved" in phone.locator(".messages").inner_text()
    assert not phone.get_by_label(re.compile("Remind me 3 days")).is_checked()
    assert User.objects.get(pk=user.pk).renewal_reminders is False
    assert fits(phone)


def test_unverified_banner_offers_a_new_link_at_375px(phone, live_server):
    phone.goto("/accounts/signup/")
    phone.get_by_label("Email").fill("new-here@example.com")
    phone.get_by_label("Password").fill(PASSWORD)
    with phone.expect_navigation():
        phone.get_by_role("button", name="Sign up").click()
    banner = phone.locator("#verify-banner")
    assert "Confirm your e-mail address" in banner.inner_text() and fits(phone)
    with phone.expect_navigation():
        banner.get_by_role("button", name="Resend link").click()
    assert "We sent a new link" in phone.locator(".messages").inner_text()
    assert len(mail.outbox) == 2
    link = re.search(r"https?://[^\s]+/account/verify/[^\s]+/", mail.outbox[-1].body).group(0)
    phone.goto(link)
    with phone.expect_navigation():
        phone.get_by_role("button", name="Confirm my address").click()
    assert phone.locator("#verify-banner").count() == 0
    assert User.objects.get(email="new-here@example.com").email_verified


def _every_customer_email(make_user, stock, django_capture_on_commit_callbacks, settings):
    """Real messages of every kind, through the real services."""
    from accounts import emails as account_emails
    from subscriptions.actions import cancel_at_period_end
    from subscriptions.purchase import purchase_plan
    from subscriptions.sweep import run_billing_sweep

    t0 = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
    end = t0 + timedelta(days=30)
    plus = "minimax-token-plan-plus"
    with django_capture_on_commit_callbacks(execute=True):
        short, renewing, leaving = (make_user(credits_usd=c) for c in (30, 40, 40))
        for user in (short, renewing, leaving):
            stock(plus)
            purchase_plan(user=user, plan_id=plus, idempotency_key="shot", now=t0)
        cancel_at_period_end(user=leaving, subscription_id=leaving.subscriptions.get().pk, now=t0)
    with django_capture_on_commit_callbacks(execute=True):
        run_billing_sweep(now=end - timedelta(days=2))
    with django_capture_on_commit_callbacks(execute=True):
        run_billing_sweep(now=end)
    base = "https://codingplans.example"
    account_emails.send_verification(short, base_url=base)
    account_emails.send_password_reset(short, base_url=base)
    account_emails.send_email_change_link(short, "new-address@example.com", base_url=base)
    account_emails.send_email_changed_notice(
        old_email=short.email, new_email="new-address@example.com"
    )
    return list(mail.outbox)


def _slug(subject: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", subject.lower()).strip("-")[:60]


def test_each_email_html_renders_and_is_saved_as_a_screenshot(
    browser, make_user, stock, django_capture_on_commit_callbacks, settings
):
    messages = _every_customer_email(make_user, stock, django_capture_on_commit_callbacks, settings)
    subjects = [m.subject for m in messages]
    for expected in (
        "Receipt: Token Plan Plus, $20.00",
        "Receipt: Token Plan Plus renewed, $20.00",
        "Add credits: your Token Plan Plus renews on 4 February 2026",
        "Your Token Plan Plus is set to end on 4 February 2026",
        "Your Token Plan Plus has ended",
        "Confirm your e-mail address for Coding Plans",
        "Reset your Coding Plans password",
        "Confirm your new e-mail address for Coding Plans",
        "Your Coding Plans e-mail address was changed",
    ):
        assert expected in subjects, (expected, subjects)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()
    seen: set[str] = set()
    for message in messages:
        if message.subject in seen:
            continue
        seen.add(message.subject)
        (html,) = [c for c, mimetype in message.alternatives if mimetype == "text/html"]
        for name, viewport in (("phone", PHONE), ("desktop", {"width": 800, "height": 900})):
            context = browser.new_context(viewport=viewport, java_script_enabled=False)
            page = context.new_page()
            page.set_content(html)
            assert page.locator("h1").inner_text().strip()
            assert fits(page), (message.subject, name)
            path = SCREENSHOTS / f"{_slug(message.subject)}-{name}.png"
            page.screenshot(path=str(path), full_page=True)
            context.close()
            assert path.stat().st_size > 5_000
