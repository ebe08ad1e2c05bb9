"""Browser-test fixtures: Debian's Chromium driven headless by the PyPI `playwright` package.

`playwright install` is never used: the browser is `/usr/bin/chromium` (`.ci/run` installs the
Debian package when it is missing). Without it the browser tests fail with a clear message
rather than skip, so a CI run without a browser cannot pass silently.

The pages are served by pytest-django's `live_server` (a real HTTP server in a thread, on a
transactional test database), so data made with the usual fixtures (`make_user`, ...) is visible
to the browser.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("CODING_PLANS_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
PASSWORD = "pw-Secret-123!"
DESKTOP = {"width": 1280, "height": 900}


def pytest_collection_modifyitems(items):
    """Run the browser tests last. While Playwright's sync API is active, an asyncio event loop
    counts as running in the main thread, which breaks Django's async-safety checks and
    `async_to_sync` for any other test; the browser is stopped at the end of the session."""
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)


@pytest.fixture(scope="session")
def browser():
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(
            f"Browser tests need Chromium at {CHROMIUM}, which is missing. Install Debian's "
            "package (`apt-get install -y chromium`; .ci/run does this), never `playwright "
            "install`.",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    # Playwright's event loop "runs" in this thread from here on; Django's ORM would otherwise
    # refuse to work ("You cannot call this from an async context"). Only while the browser is
    # up, so the rest of the suite keeps Django's check.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
            )
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def context(browser, live_server):
    context = browser.new_context(base_url=live_server.url, viewport=DESKTOP)
    context.set_default_timeout(10_000)
    yield context
    context.close()


@pytest.fixture
def page(context):
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def log_in(page):
    """Log in through the real form (SPEC 11.1a: `username` is the e-mail)."""

    def do(user, password: str = PASSWORD):
        page.goto("/accounts/login/")
        page.fill("input[name=username]", user.email)
        page.fill("input[name=password]", password)
        with page.expect_navigation():
            page.click("main form button[type=submit]")
        assert "/accounts/login/" not in page.url, "log-in failed"
        return page

    return do
