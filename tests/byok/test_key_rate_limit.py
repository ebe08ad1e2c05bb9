"""The BYOK key test and key replace are limited per user (SPEC B1 test and replace, §11.1 error
envelope, S2; issue 13 item 17): without a limit they were a free oracle, run from our servers,
for checking stolen MiniMax keys.

Real Redis counters, the stand-in MiniMax server, Django's test client.
"""

from __future__ import annotations

import time

import pytest
from django.test import Client

from byok.models import ByokKey
from tests.conftest import api_client_for

pytestmark = pytest.mark.django_db

JSON = "application/json"
KEY = "sk-live-limit-key-000000"
MESSAGE = "Too many key tests and replacements in the last minute. Wait a minute and try again."


@pytest.fixture(autouse=True)
def one_window(settings):
    """The budget counts per clock minute: start well inside one."""
    settings.BYOK_KEY_RATE_LIMIT_PER_MINUTE = 3
    if time.time() % 60 > 50:
        time.sleep(61 - time.time() % 60)


@pytest.fixture
def key_id(api) -> int:
    r = api.post("/api/v1/byok", {"provider_id": "minimax", "api_key": KEY}, content_type=JSON)
    assert r.status_code == 201, r.content
    return r.json()["id"]


def key_test(client: Client, key_id: int):
    return client.post(f"/api/v1/byok/{key_id}/test")


def replace(client: Client, key_id: int, value: str):
    return client.patch(f"/api/v1/byok/{key_id}", {"api_key": value}, content_type=JSON)


def assert_rate_limited(response):
    assert response.status_code == 429
    assert response.json() == {"error": {"code": "rate_limited", "message": MESSAGE}}


def test_api_key_test_is_limited_per_user(api, key_id, standin):
    assert [key_test(api, key_id).status_code for _ in range(3)] == [200, 200, 200]
    assert len(standin.state.calls("/v1/chat/completions")) == 3
    assert_rate_limited(key_test(api, key_id))
    # Refused before anything reaches MiniMax.
    assert len(standin.state.calls("/v1/chat/completions")) == 3


def test_api_key_replace_and_test_share_the_budget(api, key_id, standin):
    # The oracle is "store a candidate key, then test it": both steps spend the same budget.
    for i in range(2):
        assert replace(api, key_id, f"sk-live-candidate-{i:06d}").status_code == 200
    assert key_test(api, key_id).status_code == 200
    before = ByokKey.objects.values("key_hint", "encrypted_key").get(pk=key_id)
    assert_rate_limited(replace(api, key_id, "sk-live-candidate-999999"))
    assert ByokKey.objects.values("key_hint", "encrypted_key").get(pk=key_id) == before
    assert_rate_limited(key_test(api, key_id))
    # Enabling and disabling send no key anywhere: not limited.
    r = api.patch(f"/api/v1/byok/{key_id}", {"enabled": False}, content_type=JSON)
    assert r.status_code == 200 and r.json()["enabled"] is False


def test_budget_is_per_user(api, key_id, make_user):
    for _ in range(3):
        key_test(api, key_id)
    assert_rate_limited(key_test(api, key_id))
    other = api_client_for(make_user("other@example.com"))
    r = other.post("/api/v1/byok", {"provider_id": "minimax", "api_key": KEY}, content_type=JSON)
    assert key_test(other, r.json()["id"]).status_code == 200


def test_page_test_button_is_limited_with_a_clear_message(customer, key_id, standin):
    browser = Client()
    browser.force_login(customer)
    for _ in range(3):
        r = browser.post(f"/byok/{key_id}/test/", follow=True)
        assert "The key works" in r.content.decode()
    r = browser.post(f"/byok/{key_id}/test/", follow=True)
    assert r.redirect_chain == [("/byok/", 302)]
    page = r.content.decode()
    assert MESSAGE in page and "The key works" not in page
    assert len(standin.state.calls("/v1/chat/completions")) == 3


def test_page_replace_counts_with_api_tests_and_is_refused_over_the_limit(
    customer, api, key_id, standin
):
    for _ in range(3):
        key_test(api, key_id)
    browser = Client()
    browser.force_login(customer)
    before = ByokKey.objects.values("key_hint", "encrypted_key").get(pk=key_id)
    r = browser.post(
        f"/byok/{key_id}/replace/", {"api_key": "sk-live-page-candidate-1"}, follow=True
    )
    assert MESSAGE in r.content.decode()
    assert ByokKey.objects.values("key_hint", "encrypted_key").get(pk=key_id) == before
