"""Current quota of a Coding Plan (SPEC Q1, Q2, U2, 11.1): the `/quota` endpoint, the
`/current` endpoint for clients, and the quota block of the detail page — fetched with the
subscription's assigned credential, cached briefly, typed errors, nothing provider-native out."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from django.core.cache import cache
from django.utils import timezone

from codingplans import crypto
from inventory.models import Credential
from subscriptions import quota as quota_module
from subscriptions.actions import cancel_at_period_end, terminate_subscription
from subscriptions.models import Subscription
from subscriptions.purchase import purchase_plan

pytestmark = pytest.mark.django_db

PLAN = "minimax-token-plan-plus"
REMAINS = "/v1/token_plan/remains"
OWN_KEY = "sk-customer-own-minimax-key-5150"
PROVIDER_TEXT = "provider-status-text-do-not-show"

# Fixed epoch milliseconds and their ISO forms.
SHORT_START, SHORT_END = 1767218400000, 1767236400000  # 2025-12-31 22:00 → 2026-01-01 03:00
WEEK_START, WEEK_END = 1766966400000, 1767571200000  # 2025-12-29 → 2026-01-05
FIXED_TIMES = {
    "start_time": SHORT_START,
    "end_time": SHORT_END,
    "weekly_start_time": WEEK_START,
    "weekly_end_time": WEEK_END,
}

PROVIDER_NAMES = (
    "base_resp",
    "status_code",
    "status_msg",
    "model_remains",
    "model_name",
    "current_interval_remaining_percent",
    "current_interval_status",
    "interval_boost_permille",
    "current_weekly_remaining_percent",
    "current_weekly_status",
    "weekly_start_time",
    "weekly_end_time",
    "weekly_boost_permille",
    "start_time",
    "end_time",
)

CURRENT_ITEM_KEYS = {
    "subscription_id",
    "plan_id",
    "name",
    "provider_id",
    "provider_name",
    "status",
    "cancel_at_period_end",
    "current_period_end",
    "grace_deadline",
    "routing",
    "usage",  # gateway traffic in the current period (SPEC G3)
    "quota",
    "quota_error",
}


def buy(user, stock, *, key: str = "q") -> tuple[int, str]:
    """A live plan for `user`; returns (subscription id, the assigned credential's key)."""
    (credential_key,) = stock(PLAN)
    out = purchase_plan(user=user, plan_id=PLAN, idempotency_key=key, now=timezone.now())
    subscription = Subscription.objects.select_related("credential").get(pk=out.subscription_id)
    assert subscription.credential.upstream_plan_id == f"up-{credential_key}"
    return out.subscription_id, credential_key


def quota_url(subscription_id: int) -> str:
    return f"/api/v1/coding-plans/subscriptions/{subscription_id}/quota"


def page_url(subscription_id: int) -> str:
    return f"/subscriptions/coding-plans/{subscription_id}/"


def remains_keys(standin) -> list[str]:
    return [c["key"] for c in standin.state.calls(REMAINS)]


def profile(standin, key: str, **kwargs) -> None:
    standin.state.configure({"quota_profiles": {key: kwargs}})


def iso_z(value: str) -> datetime:
    assert value.endswith("Z"), value
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def assert_no_canaries(text: str, credential_key: str) -> None:
    # SPEC S1, Q1: no credential, no upstream plan id, no provider-native names or messages.
    assert credential_key not in text
    assert f"up-{credential_key}" not in text
    assert PROVIDER_TEXT not in text
    for name in PROVIDER_NAMES:
        assert name not in text, name


# --- the /quota endpoint -------------------------------------------------------------------


def test_quota_success_shape_is_exact(api, customer, stock, standin):
    # SPEC Q1, 11.1: {"fetched_at", "windows": [...]}, normalized windows only.
    sid, credential_key = buy(customer, stock)
    profile(
        standin,
        credential_key,
        short_percent=40,
        weekly_percent=65,
        weekly_boost=1200,
        overrides=FIXED_TIMES,
    )
    before = timezone.now().replace(microsecond=0)
    r = api.get(quota_url(sid))
    assert r.status_code == 200, r.content
    data = r.json()
    assert set(data) == {"fetched_at", "windows", "supported"}  # issue 18: supported
    assert data["supported"] is True
    assert before <= iso_z(data["fetched_at"]) <= timezone.now()
    assert data["windows"] == [
        {
            "id": "short_term",
            "remaining_percent": 40,
            "resets_at": "2026-01-01T03:00:00Z",
            "starts_at": "2025-12-31T22:00:00Z",
            "period": {"unit": "hour", "value": 5},
        },
        {
            "id": "weekly",
            "remaining_percent": 78,  # 65 × 1200 / 1000
            "resets_at": "2026-01-05T00:00:00Z",
            "starts_at": "2025-12-29T00:00:00Z",
            "period": {"unit": "week", "value": 1},
        },
    ]
    assert remains_keys(standin) == [credential_key]


def test_quota_status_3_and_status_2_windows(api, customer, stock, standin):
    sid, credential_key = buy(customer, stock)
    profile(standin, credential_key, short_status=2, short_percent=50, weekly_status=3)
    windows = api.get(quota_url(sid)).json()["windows"]
    assert [(w["id"], w["remaining_percent"]) for w in windows] == [("short_term", 0)]


ERROR_CASES = [
    pytest.param({"failure": "500"}, 502, "http", id="http-500"),
    pytest.param({"failure": "429"}, 502, "http", id="http-429"),
    pytest.param({"failure": "401"}, 502, "http", id="http-401"),
    pytest.param({"failure": "malformed"}, 502, "invalid_response", id="malformed"),
    pytest.param({"failure": "oversize"}, 502, "invalid_response", id="oversize"),
    pytest.param({"failure": "timeout", "timeout_sleep_s": 2}, 502, "network", id="timeout"),
    pytest.param({"profile": {"rows": "duplicate_general"}}, 502, "invalid_response", id="two"),
    pytest.param({"profile": {"rows": "missing_general"}}, 502, "invalid_response", id="none"),
    pytest.param(
        {"profile": {"overrides": {"current_interval_remaining_percent": "73"}}},
        502,
        "invalid_response",
        id="wrong-type",
    ),
    pytest.param(
        {"profile": {"status_code": 1002, "rows": "general"}}, 502, "application", id="app"
    ),
    pytest.param({"profile": {"status_code": 1004}}, 409, "subscription_inactive", id="1004"),
    pytest.param({"profile": {"rows": "null"}}, 409, "subscription_inactive", id="null-rows"),
    pytest.param({"profile": {"rows": "empty"}}, 409, "subscription_inactive", id="empty-rows"),
]


# One case per error code (and both inactive shapes) for /current and the page.
SOME_ERROR_CASES = [
    case
    for case in ERROR_CASES
    if case.id in {"http-500", "oversize", "timeout", "app", "1004", "null-rows", "two"}
]


def configure_error(standin, settings, credential_key: str, case: dict) -> None:
    case = dict(case)
    if case.get("failure") == "timeout":
        settings.MINIMAX_TIMEOUT_SECONDS = 1
    if "profile" in case:
        profile(standin, credential_key, status_msg=PROVIDER_TEXT, **case.pop("profile"))
    if case:
        standin.state.configure(case)


@pytest.mark.parametrize(("case", "status", "code"), ERROR_CASES)
def test_quota_typed_errors_in_the_envelope(
    api, customer, stock, standin, settings, case, status, code
):
    # SPEC Q2: the usual envelope, code one of the typed errors, 502 (409 for inactive).
    sid, credential_key = buy(customer, stock)
    configure_error(standin, settings, credential_key, case)
    r = api.get(quota_url(sid))
    assert r.status_code == status, r.content
    data = r.json()
    assert set(data) == {"error"}
    assert set(data["error"]) == {"code", "message"}
    assert data["error"]["code"] == code
    assert data["error"]["message"]
    assert_no_canaries(r.content.decode(), credential_key)


def test_quota_unreachable_upstream_is_network(api, customer, stock, settings):
    sid, _ = buy(customer, stock)
    settings.MINIMAX_API_BASE_URL = "http://127.0.0.1:9"
    r = api.get(quota_url(sid))
    assert (r.status_code, r.json()["error"]["code"]) == (502, "network")


def test_canceled_subscription_is_409_without_any_upstream_call(api, customer, stock, standin):
    # SPEC Q2: a terminal subscription → 409 subscription_not_live, no upstream call.
    sid, _ = buy(customer, stock)
    terminate_subscription(subscription_id=sid, actor="staff:1", now=timezone.now())
    r = api.get(quota_url(sid))
    assert r.status_code == 409, r.content
    assert r.json()["error"]["code"] == "subscription_not_live"
    assert standin.state.calls(REMAINS) == []


def test_canceled_after_a_cached_quota_still_gets_409_and_no_call(
    api, logged_in, customer, stock, standin
):
    sid, _ = buy(customer, stock)
    assert api.get(quota_url(sid)).status_code == 200
    terminate_subscription(subscription_id=sid, actor="staff:1", now=timezone.now())
    r = api.get(quota_url(sid))
    assert (r.status_code, r.json()["error"]["code"]) == (409, "subscription_not_live")
    assert len(standin.state.calls(REMAINS)) == 1
    # The page of an ended plan shows no quota and asks MiniMax nothing either.
    page = logged_in.get(page_url(sid))
    assert page.status_code == 200
    assert 'id="quota"' not in page.content.decode()
    assert len(standin.state.calls(REMAINS)) == 1


def test_pending_cancellation_is_still_live_and_has_quota(api, customer, stock):
    sid, _ = buy(customer, stock)
    cancel_at_period_end(user=customer, subscription_id=sid, now=timezone.now())
    r = api.get(quota_url(sid))
    assert r.status_code == 200, r.content
    assert [w["id"] for w in r.json()["windows"]] == ["short_term", "weekly"]


def test_another_users_subscription_is_404_without_upstream_call(
    api, customer, make_user, stock, standin
):
    # SPEC U5, S2: looks exactly like a missing id.
    other = make_user(credits_usd=100)
    sid, _ = buy(other, stock)
    for url in (quota_url(sid), quota_url(sid + 1000)):
        r = api.get(url)
        assert r.status_code == 404, r.content
        assert r.json()["error"]["code"] == "not_found"
    assert standin.state.calls(REMAINS) == []


def test_quota_and_current_need_authentication(customer, stock, client):
    sid, _ = buy(customer, stock)
    for url in (quota_url(sid), "/api/v1/coding-plans/current"):
        r = client.get(url)
        assert r.status_code == 401, (url, r.content)
        assert "error" in r.json()


# --- the assigned credential, not the BYOK entry ------------------------------------------


def installed_entry_id(api, sid: int) -> int:
    entry_id = api.get(f"/api/v1/coding-plans/subscriptions/{sid}").json()["byok_key_id"]
    assert entry_id is not None
    return entry_id


def test_quota_uses_the_assigned_credential_after_the_byok_entry_is_deleted(
    api, customer, stock, standin
):
    # SPEC Q1: fetched with the assigned credential, not the BYOK entry.
    sid, credential_key = buy(customer, stock)
    profile(standin, credential_key, short_percent=41, weekly_percent=42)
    r = api.delete(f"/api/v1/byok/{installed_entry_id(api, sid)}")
    assert r.status_code == 204, r.content
    r = api.get(quota_url(sid))
    assert r.status_code == 200, r.content
    assert [w["remaining_percent"] for w in r.json()["windows"]] == [41, 42]
    assert remains_keys(standin) == [credential_key]
    calls = standin.state.calls(REMAINS)
    assert calls[0]["headers"]["authorization"] == f"Bearer {credential_key}"


@pytest.mark.parametrize("how", ["replace-in-place", "delete-then-add"])
def test_quota_uses_the_assigned_credential_after_the_entry_is_replaced(
    api, customer, stock, standin, how
):
    # SPEC B3, Q1: the customer's own key is never used for the plan's quota.
    sid, credential_key = buy(customer, stock)
    profile(standin, credential_key, short_percent=41, weekly_percent=42)
    profile(standin, OWN_KEY, short_percent=11, weekly_percent=12)
    entry_id = installed_entry_id(api, sid)
    if how == "replace-in-place":
        r = api.patch(
            f"/api/v1/byok/{entry_id}",
            data=json.dumps({"api_key": OWN_KEY}),
            content_type="application/json",
        )
        assert r.status_code == 200, r.content
    else:
        assert api.delete(f"/api/v1/byok/{entry_id}").status_code == 204
        r = api.post(
            "/api/v1/byok",
            data=json.dumps({"provider_id": "minimax", "api_key": OWN_KEY}),
            content_type="application/json",
        )
        assert r.status_code == 201, r.content
    assert r.json()["subscription_id"] is None  # the customer's own key, unlinked

    r = api.get(quota_url(sid))
    assert r.status_code == 200, r.content
    assert [w["remaining_percent"] for w in r.json()["windows"]] == [41, 42]
    assert remains_keys(standin) == [credential_key]
    assert all(c["key"] != OWN_KEY for c in standin.state.calls(REMAINS))

    current = api.get("/api/v1/coding-plans/current").json()["subscriptions"]
    assert current[0]["routing"] == {
        "installed_entry_linked": False,
        "installed_entry_enabled": False,
        "byok_key_id": None,
    }
    assert [w["remaining_percent"] for w in current[0]["quota"]["windows"]] == [41, 42]


def test_credential_no_longer_assigned_gives_a_quota_error_not_a_broken_page(
    api, logged_in, customer, stock, standin
):
    # A live plan whose credential is already out of the assigned state: a typed quota error
    # (never `subscription_not_live` for a live plan, never a 500), and no upstream call.
    sid, _ = buy(customer, stock)
    Credential.objects.filter(subscription__pk=sid).update(
        state=Credential.State.REVOCATION_PENDING, encrypted_key=""
    )
    r = api.get(quota_url(sid))
    assert (r.status_code, r.json()["error"]["code"]) == (409, "subscription_inactive")
    current = api.get("/api/v1/coding-plans/current")
    assert current.status_code == 200
    assert current.json()["subscriptions"][0]["quota_error"]["code"] == "subscription_inactive"
    page = logged_in.get(page_url(sid))
    assert page.status_code == 200
    assert 'id="quota-error"' in page.content.decode()
    assert standin.state.calls(REMAINS) == []


def test_unsendable_or_undecryptable_credential_is_an_application_error(
    api, logged_in, customer, stock, standin
):
    sid, _ = buy(customer, stock)
    credentials = Credential.objects.filter(subscription__pk=sid)
    # A stored key that cannot travel in a header: never the internal kind `invalid_key`.
    credentials.update(encrypted_key=crypto.encrypt("sk bad key with spaces"))
    r = api.get(quota_url(sid))
    assert (r.status_code, r.json()["error"]["code"]) == (502, "application")
    cache.clear()
    # A stored key the configured encryption keys cannot open.
    credentials.update(encrypted_key="not-a-fernet-token")
    r = api.get(quota_url(sid))
    assert (r.status_code, r.json()["error"]["code"]) == (502, "application")
    assert logged_in.get(page_url(sid)).status_code == 200
    assert standin.state.calls(REMAINS) == []


# --- caching ----------------------------------------------------------------------------------


def test_two_calls_within_the_ttl_make_one_upstream_call(api, logged_in, customer, stock, standin):
    # SPEC Q2: cached briefly; the page, the endpoint and /current share the cache.
    sid, _ = buy(customer, stock)
    first = api.get(quota_url(sid)).json()
    second = api.get(quota_url(sid)).json()
    assert first == second
    assert logged_in.get(page_url(sid)).status_code == 200
    assert api.get("/api/v1/coding-plans/current").json()["subscriptions"][0]["quota"] == first
    assert len(standin.state.calls(REMAINS)) == 1
    # Once the entry expires, the next call asks MiniMax again.
    cache.clear()
    api.get(quota_url(sid))
    assert len(standin.state.calls(REMAINS)) == 2


def test_errors_are_cached_briefly_too(api, customer, stock, standin):
    sid, _ = buy(customer, stock)
    standin.state.configure({"failure": "500"})
    assert api.get(quota_url(sid)).status_code == 502
    assert api.get(quota_url(sid)).status_code == 502
    assert len(standin.state.calls(REMAINS)) == 1


def test_cache_lifetimes_are_at_most_60_seconds(api, customer, stock, standin, monkeypatch):
    sid, _ = buy(customer, stock)
    lifetimes: list[int] = []
    real_set = cache.set

    def spy(key, value, timeout=None, **kwargs):
        lifetimes.append(timeout)
        return real_set(key, value, timeout, **kwargs)

    monkeypatch.setattr(quota_module.cache, "set", spy)
    api.get(quota_url(sid))
    cache.clear()
    standin.state.configure({"failure": "500"})
    api.get(quota_url(sid))
    assert len(lifetimes) == 2
    assert all(isinstance(t, int) and 0 < t <= 60 for t in lifetimes), lifetimes


def test_a_cache_outage_costs_an_upstream_call_not_the_answer(
    api, logged_in, customer, stock, standin, monkeypatch
):
    sid, _ = buy(customer, stock)

    def down(*args, **kwargs):
        raise ConnectionError("redis is down")

    monkeypatch.setattr(quota_module.cache, "get", down)
    monkeypatch.setattr(quota_module.cache, "set", down)
    assert api.get(quota_url(sid)).status_code == 200
    assert logged_in.get(page_url(sid)).status_code == 200


# --- /current ------------------------------------------------------------------------------


def test_current_lists_live_plans_with_routing_and_quota_only(api, customer, stock, standin):
    # Issue 5: live subscriptions only, routing state, quota or its error; no history/charges.
    old_sid, _ = buy(customer, stock, key="first")
    terminate_subscription(subscription_id=old_sid, actor="staff:1", now=timezone.now())
    sid, credential_key = buy(customer, stock, key="second")
    profile(standin, credential_key, short_percent=30, weekly_percent=60)

    r = api.get("/api/v1/coding-plans/current")
    assert r.status_code == 200, r.content
    data = r.json()
    assert set(data) == {"subscriptions"}
    (item,) = data["subscriptions"]
    assert set(item) == CURRENT_ITEM_KEYS
    subscription = Subscription.objects.get(pk=sid)
    assert item["subscription_id"] == sid
    assert item["plan_id"] == PLAN
    assert item["provider_id"] == "minimax"
    assert item["provider_name"] == "MiniMax"
    assert item["name"] == subscription.plan_name
    assert item["status"] == "active"
    assert item["cancel_at_period_end"] is False
    assert iso_z(item["current_period_end"]) == subscription.current_period_end
    assert item["grace_deadline"] is None
    entry_id = installed_entry_id(api, sid)
    assert item["routing"] == {
        "installed_entry_linked": True,
        "installed_entry_enabled": True,
        "byok_key_id": entry_id,
    }
    assert item["quota_error"] is None
    assert set(item["quota"]) == {"fetched_at", "windows", "supported"}
    assert [w["remaining_percent"] for w in item["quota"]["windows"]] == [30, 60]
    text = r.content.decode()
    for word in ("charge", "amount", "canceled", "cancellation_reason", "history"):
        assert word not in text
    assert str(old_sid) not in [str(s["subscription_id"]) for s in data["subscriptions"]]
    assert_no_canaries(text, credential_key)


def test_current_routing_shows_a_disabled_installed_entry(api, customer, stock):
    sid, _ = buy(customer, stock)
    entry_id = installed_entry_id(api, sid)
    r = api.patch(
        f"/api/v1/byok/{entry_id}",
        data=json.dumps({"enabled": False}),
        content_type="application/json",
    )
    assert r.status_code == 200, r.content
    (item,) = api.get("/api/v1/coding-plans/current").json()["subscriptions"]
    assert item["routing"] == {
        "installed_entry_linked": True,
        "installed_entry_enabled": False,
        "byok_key_id": entry_id,
    }


def test_current_with_no_live_plans_is_empty(api, customer, stock, standin):
    sid, _ = buy(customer, stock)
    terminate_subscription(subscription_id=sid, actor="staff:1", now=timezone.now())
    r = api.get("/api/v1/coding-plans/current")
    assert (r.status_code, r.json()) == (200, {"subscriptions": []})
    assert standin.state.calls(REMAINS) == []


@pytest.mark.parametrize(("case", "status", "code"), SOME_ERROR_CASES)
def test_current_carries_the_quota_error_and_never_fails(
    api, customer, stock, standin, settings, case, status, code
):
    sid, credential_key = buy(customer, stock)
    configure_error(standin, settings, credential_key, case)
    r = api.get("/api/v1/coding-plans/current")
    assert r.status_code == 200, r.content
    (item,) = r.json()["subscriptions"]
    assert item["subscription_id"] == sid
    assert item["quota"] is None
    assert set(item["quota_error"]) == {"code", "message"}
    assert item["quota_error"]["code"] == code
    assert_no_canaries(r.content.decode(), credential_key)


# --- the detail page -----------------------------------------------------------------------


def test_detail_page_shows_labelled_bars(logged_in, customer, stock, standin):
    # SPEC U2: current quota as labelled progress bars with the reset time.
    sid, credential_key = buy(customer, stock)
    profile(standin, credential_key, short_percent=35, weekly_percent=90, overrides=FIXED_TIMES)
    r = logged_in.get(page_url(sid))
    assert r.status_code == 200
    html = r.content.decode()
    assert html.count('role="progressbar"') == 2
    assert 'aria-label="5-hour window remaining"' in html
    assert 'aria-label="Weekly window remaining"' in html
    assert 'aria-valuenow="35"' in html and 'aria-valuenow="90"' in html
    assert 'datetime="2026-01-01T03:00:00Z"' in html
    assert 'datetime="2026-01-05T00:00:00Z"' in html
    assert 'id="quota-error"' not in html
    assert_no_canaries(html, credential_key)


def test_detail_page_bars_with_boosts_and_exhausted_windows(logged_in, customer, stock, standin):
    sid, credential_key = buy(customer, stock)
    profile(standin, credential_key, short_percent=33, short_boost=1100, weekly_status=2)
    html = logged_in.get(page_url(sid)).content.decode()
    assert 'aria-valuenow="36.3"' in html and "width:36.3%" in html and "36.3% left" in html
    assert 'aria-valuenow="0"' in html and "0% left" in html


def test_detail_page_without_windows_says_so(logged_in, customer, stock, standin):
    sid, credential_key = buy(customer, stock)
    profile(standin, credential_key, short_status=3, weekly_status=3)
    r = logged_in.get(page_url(sid))
    assert r.status_code == 200
    html = r.content.decode()
    assert 'role="progressbar"' not in html and 'id="quota-error"' not in html
    assert "no quota windows" in html


@pytest.mark.parametrize(("case", "status", "code"), SOME_ERROR_CASES)
def test_detail_page_never_breaks_on_a_quota_error(
    logged_in, customer, stock, standin, settings, case, status, code
):
    # SPEC Q2: a small notice; the rest of the page (status, billing, actions) still there.
    sid, credential_key = buy(customer, stock)
    configure_error(standin, settings, credential_key, case)
    r = logged_in.get(page_url(sid))
    assert r.status_code == 200
    html = r.content.decode()
    assert 'id="quota-error"' in html
    assert 'role="progressbar"' not in html
    assert 'id="billing-history"' in html and 'id="subscription-actions"' in html
    assert_no_canaries(html, credential_key)
