"""/byok pages (SPEC B1, B2, B3, S2, 11.1a): forms with CSRF, hints only, managed-entry warning."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.utils.html import escape

from byok.models import ByokKey
from byok.views import MANAGED_WARNING as _MANAGED_WARNING

pytestmark = pytest.mark.django_db

KEY = "sk-live-page-key-abcdef1234"
NEW_KEY = "sk-live-page-new-key-5678"
MANAGED_WARNING = escape(_MANAGED_WARNING)  # as it appears in the HTML
WARNING_TITLE = "Change the key managed by your Coding Plan?"


class Browser:
    """A logged-in client that enforces CSRF like a real browser session and submits forms with
    the token from the page."""

    def __init__(self, user):
        self.client = Client(enforce_csrf_checks=True)
        self.client.force_login(user)

    def page(self):
        r = self.client.get("/byok/")
        assert r.status_code == 200
        return r

    def token(self) -> str:
        self.page()
        return self.client.cookies["csrftoken"].value

    def post(self, path: str, data: dict | None = None, *, csrf: bool = True):
        data = dict(data or {})
        if csrf:
            data["csrfmiddlewaretoken"] = self.token()
        return self.client.post(path, data)

    def submit(self, path: str, data: dict | None = None):
        """POST, expect the redirect back to /byok/, and return the page it lands on."""
        r = self.post(path, data)
        assert r.status_code == 302, (r.status_code, r.content[:500])
        assert r["Location"] == "/byok/"
        return self.page()


def text(response) -> str:
    return response.content.decode()


@pytest.fixture
def browser(customer) -> Browser:
    return Browser(customer)


@pytest.fixture
def key(browser) -> ByokKey:
    browser.submit("/byok/add/", {"provider_id": "minimax", "api_key": KEY})
    return ByokKey.objects.get()


def managed(key: ByokKey) -> ByokKey:
    ByokKey.objects.filter(pk=key.pk).update(managed_by=ByokKey.ManagedBy.CODING_PLAN)
    key.refresh_from_db()
    return key


# --- anonymous -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, path",
    [
        ("get", "/byok/"),
        ("post", "/byok/add/"),
        ("post", "/byok/1/replace/"),
        ("post", "/byok/1/toggle/"),
        ("post", "/byok/1/delete/"),
        ("post", "/byok/1/test/"),
    ],
)
def test_anonymous_is_sent_to_login(db, method, path):
    data = {"api_key": KEY, "provider_id": "minimax"} if method == "post" else None
    r = getattr(Client(), method)(path, data)
    assert r.status_code == 302
    assert r["Location"] == f"/accounts/login/?next={path}"
    assert ByokKey.objects.count() == 0


def test_path_without_trailing_slash_redirects(logged_in):
    r = logged_in.get("/byok")
    assert r.status_code == 301 and r["Location"] == "/byok/"


# --- B1 flows ------------------------------------------------------------------------------


def test_empty_page(browser):
    r = browser.page()
    assert "You have no provider keys yet." in text(r)
    assert 'action="/byok/add/"' in text(r)
    assert 'name="csrfmiddlewaretoken"' in text(r)


def test_add_shows_only_the_hint(browser, standin):
    r = browser.submit("/byok/add/", {"provider_id": "minimax", "api_key": KEY})
    body = text(r)
    assert "Key saved." in body
    assert "…1234" in body
    assert KEY not in body and KEY[:-4] not in body
    key = ByokKey.objects.get()
    assert key.enabled and key.managed_by is None
    assert f'id="key-{key.pk}"' in body
    assert standin.state.calls() == []  # adding does not call the provider


def test_every_form_on_the_page_carries_a_csrf_token(browser, key):
    body = text(browser.page())
    forms = re.findall(r"<form\b.*?</form>", body, flags=re.S)
    posts = [f for f in forms if 'method="post"' in f]
    assert len(posts) >= 5  # test, toggle, delete, replace, add
    for form in posts:
        assert 'name="csrfmiddlewaretoken"' in form, form


@pytest.mark.parametrize(
    "path",
    [
        "/byok/add/",
        "/byok/{id}/replace/",
        "/byok/{id}/toggle/",
        "/byok/{id}/delete/",
        "/byok/{id}/test/",
    ],
)
def test_posts_without_csrf_are_refused(browser, key, standin, path):
    before = ByokKey.objects.values().get()
    r = browser.post(
        path.format(id=key.pk), {"provider_id": "minimax", "api_key": NEW_KEY}, csrf=False
    )
    assert r.status_code == 403
    assert ByokKey.objects.values().get() == before
    assert standin.state.calls() == []


def test_add_a_second_key_for_the_provider_is_refused(browser, key):
    r = browser.post("/byok/add/", {"provider_id": "minimax", "api_key": NEW_KEY})
    assert r.status_code == 400
    assert "You already have a key for this provider." in text(r)
    assert NEW_KEY not in text(r)
    assert ByokKey.objects.count() == 1


def test_add_with_unknown_provider_is_refused_without_echoing_it(browser):
    r = browser.post("/byok/add/", {"provider_id": "sk-looks-like-a-key-9999", "api_key": KEY})
    assert r.status_code == 400
    assert "This provider is not supported." in text(r)
    assert "sk-looks-like-a-key-9999" not in text(r)
    assert KEY not in text(r)
    assert ByokKey.objects.count() == 0


@pytest.mark.parametrize("bad", ["", "short", "sk-has space-123456", "x" * 600])
def test_add_with_bad_key_is_refused_without_echoing_it(browser, bad):
    r = browser.post("/byok/add/", {"provider_id": "minimax", "api_key": bad})
    assert r.status_code == 400
    assert 'role="alert"' in text(r)
    if len(bad) > 5:
        assert bad not in text(r)
    assert ByokKey.objects.count() == 0


def test_replace(browser, key, standin):
    r = browser.submit(f"/byok/{key.pk}/replace/", {"api_key": NEW_KEY})
    assert "Key replaced." in text(r)
    assert "…5678" in text(r) and NEW_KEY not in text(r)
    browser.submit(f"/byok/{key.pk}/test/")
    assert standin.state.calls()[0]["key"] == NEW_KEY


@pytest.mark.parametrize("bad", ["", "bad key with spaces"])
def test_replace_with_bad_key_changes_nothing(browser, key, bad):
    before = ByokKey.objects.values().get()
    r = browser.submit(f"/byok/{key.pk}/replace/", {"api_key": bad})
    assert "msg-error" in text(r)
    assert not bad or bad not in text(r)
    assert ByokKey.objects.values().get() == before


def test_toggle_disables_and_enables(browser, key):
    r = browser.submit(f"/byok/{key.pk}/toggle/", {"enabled": "0"})
    assert "Key disabled." in text(r)
    assert ByokKey.objects.get().enabled is False
    assert 'name="enabled" value="1"' in text(r)  # the button now asks to enable
    r = browser.submit(f"/byok/{key.pk}/toggle/", {"enabled": "1"})
    assert "Key enabled." in text(r)
    assert ByokKey.objects.get().enabled is True


def test_toggle_double_submit_does_not_flip_back(browser, key):
    browser.submit(f"/byok/{key.pk}/toggle/", {"enabled": "0"})
    browser.submit(f"/byok/{key.pk}/toggle/", {"enabled": "0"})
    assert ByokKey.objects.get().enabled is False


def test_toggle_without_a_wanted_state_flips(browser, key):
    browser.submit(f"/byok/{key.pk}/toggle/")
    assert ByokKey.objects.get().enabled is False
    browser.submit(f"/byok/{key.pk}/toggle/")
    assert ByokKey.objects.get().enabled is True


def test_delete(browser, key):
    r = browser.submit(f"/byok/{key.pk}/delete/")
    assert "Key deleted." in text(r)
    assert "You have no provider keys yet." in text(r)
    assert ByokKey.objects.count() == 0


def test_test_ok(browser, key, standin):
    r = browser.submit(f"/byok/{key.pk}/test/")
    assert "The key works" in text(r)
    assert standin.state.calls()[0]["key"] == KEY


@pytest.mark.parametrize(
    "failure, message",
    [
        ("401", "MiniMax rejected this key."),
        ("500", "MiniMax returned an error"),
        ("malformed", "MiniMax sent a response we could not understand."),
        ("timeout", "MiniMax could not be reached or did not answer in time."),
    ],
)
def test_test_failure_shows_our_message(browser, key, standin, settings, failure, message):
    settings.MINIMAX_TIMEOUT_SECONDS = 0.3
    standin.state.configure({"failure": failure, "timeout_sleep_s": 0.8})
    r = browser.submit(f"/byok/{key.pk}/test/")
    assert f"Key test failed: {message}" in text(r)
    assert "stand-in" not in text(r)


def test_test_of_a_key_that_can_no_longer_be_decrypted_does_not_break_the_page(
    browser, key, settings, standin
):
    # Its encryption key was retired without re-encrypting it: say so, never a 500.
    from cryptography.fernet import Fernet

    settings.CODING_PLANS_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    r = browser.submit(f"/byok/{key.pk}/test/")
    assert "can no longer be read" in text(r)
    assert standin.state.calls() == []


@pytest.mark.parametrize(
    "path",
    [
        "/byok/add/",
        "/byok/{id}/replace/",
        "/byok/{id}/toggle/",
        "/byok/{id}/delete/",
        "/byok/{id}/test/",
    ],
)
def test_get_on_a_form_action_is_405(logged_in, key, path):
    assert logged_in.get(path.format(id=key.pk)).status_code == 405


# --- S2: another user's key ----------------------------------------------------------------


@pytest.fixture
def others_key(make_user) -> ByokKey:
    browser = Browser(make_user("other@example.com"))
    browser.submit("/byok/add/", {"provider_id": "minimax", "api_key": "sk-live-not-yours-0000"})
    return ByokKey.objects.get(user__email="other@example.com")


@pytest.mark.parametrize(
    "action, data",
    [
        ("replace", {"api_key": NEW_KEY, "confirm": "on"}),
        ("toggle", {"enabled": "0", "confirm": "on"}),
        ("delete", {"confirm": "on"}),
        ("test", {}),
    ],
)
def test_another_users_key_is_404(browser, others_key, standin, action, data):
    before = ByokKey.objects.values().get(pk=others_key.pk)
    r = browser.post(f"/byok/{others_key.pk}/{action}/", data)
    assert r.status_code == 404
    assert "…0000" not in text(r)
    assert ByokKey.objects.values().get(pk=others_key.pk) == before
    assert standin.state.calls() == []
    assert browser.post(f"/byok/{others_key.pk + 1000}/{action}/", data).status_code == 404


def test_page_lists_only_own_keys(browser, key, others_key):
    body = text(browser.page())
    assert f'id="key-{key.pk}"' in body
    assert f'id="key-{others_key.pk}"' not in body and "…0000" not in body


# --- B2: managed entries -------------------------------------------------------------------


def test_managed_entry_is_labelled(browser, key):
    managed(key)
    body = text(browser.page())
    assert "Managed by your MiniMax Coding Plan" in body
    assert MANAGED_WARNING in body
    assert KEY not in body


@pytest.mark.parametrize(
    "action, data",
    [
        ("replace", {"api_key": NEW_KEY}),
        ("toggle", {"enabled": "0"}),
        ("toggle", {}),
        ("delete", {}),
    ],
)
def test_changing_a_managed_entry_first_warns_and_changes_nothing(browser, key, action, data):
    managed(key)
    before = ByokKey.objects.values().get()
    r = browser.post(f"/byok/{key.pk}/{action}/", data)
    assert r.status_code == 200
    body = text(r)
    assert WARNING_TITLE in body
    assert MANAGED_WARNING in body
    assert f'action="/byok/{key.pk}/{action}/"' in body
    assert 'name="confirm" value="on"' in body
    assert NEW_KEY not in body and KEY not in body  # the typed key is never echoed back
    assert ByokKey.objects.values().get() == before


def test_managed_replace_with_confirm_proceeds_and_unlinks(browser, key):
    managed(key)
    r = browser.submit(f"/byok/{key.pk}/replace/", {"api_key": NEW_KEY, "confirm": "on"})
    assert "Key replaced." in text(r)
    key.refresh_from_db()
    assert key.key_hint == "…5678"
    assert key.managed_by is None  # SPEC B3: the customer's own entry from now on
    assert "Managed by your MiniMax Coding Plan" not in text(r)


def test_managed_toggle_with_confirm_proceeds_and_stays_managed(browser, key):
    managed(key)
    r = browser.post(f"/byok/{key.pk}/toggle/", {"enabled": "0"})
    assert 'name="enabled" value="0"' in text(r)  # the warning carries the wanted state
    assert "Disable the plan's key" in text(r)
    browser.submit(f"/byok/{key.pk}/toggle/", {"enabled": "0", "confirm": "on"})
    key.refresh_from_db()
    assert key.enabled is False
    assert key.managed_by == ByokKey.ManagedBy.CODING_PLAN  # B3: enabling/disabling keeps it
    browser.submit(f"/byok/{key.pk}/toggle/", {"enabled": "1", "confirm": "on"})
    key.refresh_from_db()
    assert key.enabled is True


def test_managed_delete_with_confirm_proceeds(browser, key):
    managed(key)
    r = browser.submit(f"/byok/{key.pk}/delete/", {"confirm": "on"})
    assert "Key deleted." in text(r)
    assert ByokKey.objects.count() == 0


def test_managed_test_needs_no_confirmation(browser, key, standin):
    managed(key)
    r = browser.submit(f"/byok/{key.pk}/test/")
    assert "The key works" in text(r)


# --- B2/B3 with a real installed entry -----------------------------------------------------


@pytest.fixture
def installed(customer, api, stock) -> tuple[ByokKey, str]:
    (credential,) = stock("minimax-token-plan-plus", 1)
    r = api.post(
        "/api/v1/coding-plans/purchases",
        {"plan_id": "minimax-token-plan-plus"},
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="byok-pages",
    )
    assert r.status_code == 201, r.content
    return ByokKey.objects.get(user=customer), credential


def test_installed_entry_page_shows_no_raw_key(browser, installed):
    _entry, credential = installed
    body = text(browser.page())
    assert "Managed by your MiniMax Coding Plan" in body
    assert credential not in body and credential[:-4] not in body


def test_installed_entry_toggle_keeps_the_link_and_replace_unlinks(browser, installed):
    entry, _credential = installed
    assert entry.subscription_id is not None
    browser.submit(f"/byok/{entry.pk}/toggle/", {"enabled": "0", "confirm": "on"})
    entry.refresh_from_db()
    assert entry.enabled is False and entry.subscription_id is not None
    browser.submit(f"/byok/{entry.pk}/replace/", {"api_key": NEW_KEY, "confirm": "on"})
    entry.refresh_from_db()
    assert entry.managed_by is None and entry.subscription_id is None
