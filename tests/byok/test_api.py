"""/api/v1/byok (SPEC 11.1, B1, S2): CRUD, the key test, authorization, only hints leave."""

from __future__ import annotations

import pytest
from django.test import Client

from adminops.models import AuditEvent
from byok.models import ByokKey
from tests.conftest import api_client_for

pytestmark = pytest.mark.django_db

KEY = "sk-live-abcdef123456"
OTHER_KEY = "sk-live-other-key-987654"
JSON = "application/json"


def add(client: Client, api_key: str = KEY, provider_id: str = "minimax"):
    return client.post(
        "/api/v1/byok", {"provider_id": provider_id, "api_key": api_key}, content_type=JSON
    )


def patch(client: Client, key_id: int, body: dict):
    return client.patch(f"/api/v1/byok/{key_id}", body, content_type=JSON)


def error_code(response) -> str:
    return response.json()["error"]["code"]


@pytest.fixture
def key_id(api) -> int:
    r = add(api)
    assert r.status_code == 201, r.content
    return r.json()["id"]


@pytest.fixture
def other(make_user):
    """Another customer with their own MiniMax key."""
    user = make_user("other@example.com")
    client = api_client_for(user)
    r = add(client, OTHER_KEY)
    assert r.status_code == 201
    return client, r.json()["id"]


# --- B1: add ------------------------------------------------------------------------------


def test_add_returns_201_with_only_the_hint(api):
    r = add(api)
    assert r.status_code == 201, r.content
    body = r.json()
    assert set(body) == {
        "id",
        "provider_id",
        "enabled",
        "key_hint",
        "managed_by",
        "subscription_id",
        "created_at",
        "updated_at",
    }
    assert body["provider_id"] == "minimax"
    assert body["enabled"] is True
    assert body["key_hint"] == "…3456"
    assert body["managed_by"] is None and body["subscription_id"] is None
    assert body["created_at"].endswith(("Z", "+00:00"))
    assert "abcdef123456" not in r.content.decode()


def test_add_trims_surrounding_whitespace(api, standin):
    r = add(api, f"  {KEY}\n")
    assert r.status_code == 201
    api.post(f"/api/v1/byok/{r.json()['id']}/test")
    assert standin.state.calls()[0]["key"] == KEY


def test_list_shows_own_keys_only(api, key_id, other):
    r = api.get("/api/v1/byok")
    assert r.status_code == 200
    keys = r.json()["keys"]
    assert [k["id"] for k in keys] == [key_id]
    assert KEY not in r.content.decode()


def test_get_one(api, key_id):
    r = api.get(f"/api/v1/byok/{key_id}")
    assert r.status_code == 200
    assert r.json()["id"] == key_id and r.json()["key_hint"] == "…3456"


def test_second_key_for_the_same_provider_is_409(api, key_id):
    r = add(api, "sk-live-second-key-0000")
    assert r.status_code == 409
    assert error_code(r) == "provider_slot_occupied"
    assert ByokKey.objects.count() == 1


def test_disabled_key_still_occupies_the_slot(api, key_id):
    # SPEC glossary: at most one entry per user and provider, enabled or disabled.
    assert patch(api, key_id, {"enabled": False}).status_code == 200
    r = add(api, "sk-live-second-key-0000")
    assert r.status_code == 409
    assert error_code(r) == "provider_slot_occupied"


def test_unknown_provider_is_400(api):
    r = add(api, provider_id="openai")
    assert r.status_code == 400
    assert error_code(r) == "unknown_provider"
    assert ByokKey.objects.count() == 0


@pytest.mark.parametrize(
    "bad",
    ["", "short", "sk-has a space-1234", "sk-\u00fcnicode-12345", "x" * 513, "sk-tab\there-1234"],
)
def test_bad_key_shape_is_400(api, bad):
    r = add(api, bad)
    assert r.status_code == 400
    assert error_code(r) == "invalid_api_key"
    assert ByokKey.objects.count() == 0
    if len(bad) > 4:
        assert bad not in r.content.decode()


@pytest.mark.parametrize(
    "body",
    [
        {"provider_id": "minimax"},
        {"api_key": KEY},
        {"provider_id": "minimax", "api_key": 12345678901},
        {"provider_id": "minimax", "api_key": None},
        {"provider_id": ["minimax"], "api_key": KEY},
    ],
)
def test_malformed_body_is_400_without_echoing_values(api, body):
    r = api.post("/api/v1/byok", body, content_type=JSON)
    assert r.status_code == 400
    assert error_code(r) in {"invalid_request", "invalid_api_key"}
    assert KEY not in r.content.decode()
    assert "12345678901" not in r.content.decode()
    assert ByokKey.objects.count() == 0


def test_body_that_is_not_json_is_400(api):
    r = api.post("/api/v1/byok", "api_key=" + KEY, content_type=JSON)
    assert r.status_code == 400
    assert KEY not in r.content.decode()


# --- B1: replace / enable / disable / delete ----------------------------------------------


def test_patch_replaces_the_key(api, key_id, standin):
    r = patch(api, key_id, {"api_key": "sk-live-replaced-7777"})
    assert r.status_code == 200
    assert r.json()["key_hint"] == "…7777"
    assert r.json()["enabled"] is True
    api.post(f"/api/v1/byok/{key_id}/test")
    assert standin.state.calls()[0]["key"] == "sk-live-replaced-7777"


def test_patch_disables_and_enables(api, key_id):
    r = patch(api, key_id, {"enabled": False})
    assert r.status_code == 200 and r.json()["enabled"] is False
    assert ByokKey.objects.get().enabled is False
    r = patch(api, key_id, {"enabled": True})
    assert r.json()["enabled"] is True
    assert r.json()["key_hint"] == "…3456"


def test_patch_with_bad_key_changes_nothing(api, key_id):
    before = ByokKey.objects.get().encrypted_key
    r = patch(api, key_id, {"api_key": "bad key", "enabled": False})
    assert r.status_code == 400
    assert error_code(r) == "invalid_api_key"
    key = ByokKey.objects.get()
    assert key.encrypted_key == before and key.enabled is True


def test_patch_writes_an_audit_event_without_the_key(api, key_id):
    patch(api, key_id, {"api_key": "sk-live-replaced-7777"})
    events = list(AuditEvent.objects.filter(event_type__startswith="byok.").order_by("pk"))
    assert [e.event_type for e in events] == ["byok.added", "byok.replaced"]
    for event in events:
        text = f"{event.old_values} {event.new_values}"
        assert KEY not in text and "sk-live-replaced-7777" not in text


def test_delete_is_204_and_frees_the_slot(api, key_id):
    r = api.delete(f"/api/v1/byok/{key_id}")
    assert r.status_code == 204
    assert ByokKey.objects.count() == 0
    assert api.get(f"/api/v1/byok/{key_id}").status_code == 404
    assert api.delete(f"/api/v1/byok/{key_id}").status_code == 404
    assert add(api, "sk-live-fresh-key-5555").status_code == 201


# --- B1: test ----------------------------------------------------------------------------


def test_key_test_ok_calls_the_provider_without_changing_anything(api, key_id, standin):
    before = ByokKey.objects.values().get()
    r = api.post(f"/api/v1/byok/{key_id}/test")
    assert r.status_code == 200
    assert r.json() == {"ok": True, "error": None}
    (call,) = standin.state.calls("/v1/chat/completions")
    assert call["key"] == KEY
    assert ByokKey.objects.values().get() == before


@pytest.mark.parametrize(
    "failure, code",
    [
        ("401", "invalid_key"),
        ("403", "invalid_key"),
        ("500", "http"),
        ("429", "http"),
        ("redirect", "http"),
        ("malformed", "invalid_response"),
        ("oversize", "invalid_response"),
        ("timeout", "network"),
    ],
)
def test_key_test_failure_shape(api, key_id, standin, settings, failure, code):
    settings.MINIMAX_TIMEOUT_SECONDS = 0.3
    standin.state.configure({"failure": failure, "timeout_sleep_s": 0.8})
    r = api.post(f"/api/v1/byok/{key_id}/test")
    assert r.status_code == 200
    body = r.json()
    assert body["ok"] is False
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    text = r.content.decode().lower()
    assert "stand-in" not in text and KEY.lower() not in text


def test_key_test_of_a_rejected_key(api, standin):
    key_id = add(api, "sk-invalid-key-0001").json()["id"]
    r = api.post(f"/api/v1/byok/{key_id}/test")
    assert r.json()["ok"] is False and r.json()["error"]["code"] == "invalid_key"


def test_key_test_of_a_disabled_key_still_tests(api, key_id, standin):
    patch(api, key_id, {"enabled": False})
    assert api.post(f"/api/v1/byok/{key_id}/test").json()["ok"] is True


# --- S2: authorization --------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, suffix, body",
    [
        ("get", "", None),
        ("patch", "", {"enabled": False}),
        ("patch", "", {"api_key": "sk-live-hijack-0000"}),
        ("delete", "", None),
        ("post", "/test", None),
    ],
)
def test_another_users_key_is_404(api, key_id, other, standin, method, suffix, body):
    _, other_id = other
    kwargs = {"data": body, "content_type": JSON} if body is not None else {}
    r = getattr(api, method)(f"/api/v1/byok/{other_id}{suffix}", **kwargs)
    assert r.status_code == 404
    assert error_code(r) == "not_found"
    # Same answer as an id that does not exist at all.
    missing = getattr(api, method)(f"/api/v1/byok/{other_id + 1000}{suffix}", **kwargs)
    assert missing.status_code == 404 and missing.json() == r.json()
    other_key = ByokKey.objects.get(pk=other_id)
    assert other_key.enabled is True and other_key.key_hint == "…7654"
    assert standin.state.calls() == []


@pytest.mark.parametrize(
    "method, path",
    [
        ("get", "/api/v1/byok"),
        ("post", "/api/v1/byok"),
        ("get", "/api/v1/byok/1"),
        ("patch", "/api/v1/byok/1"),
        ("delete", "/api/v1/byok/1"),
        ("post", "/api/v1/byok/1/test"),
    ],
)
@pytest.mark.parametrize(
    "headers",
    [{}, {"HTTP_AUTHORIZATION": "Bearer cp_not-a-real-token"}, {"HTTP_AUTHORIZATION": "Basic abc"}],
)
def test_anonymous_or_bad_token_is_401(db, method, path, headers):
    r = getattr(Client(**headers), method)(path, {}, content_type=JSON)
    assert r.status_code == 401
    assert error_code(r) == "unauthenticated"


def test_revoked_token_is_401(customer, api):
    from accounts.models import ApiToken

    ApiToken.objects.filter(user=customer).update(revoked_at="2020-01-01T00:00:00Z")
    assert api.get("/api/v1/byok").status_code == 401


def test_session_auth_needs_csrf_for_writes(customer):
    client = Client(enforce_csrf_checks=True)
    client.force_login(customer)
    assert client.get("/api/v1/byok").status_code == 200
    r = client.post("/api/v1/byok", {"provider_id": "minimax", "api_key": KEY}, content_type=JSON)
    assert r.status_code == 403
    assert error_code(r) == "csrf_failed"
    assert ByokKey.objects.count() == 0
    client.get("/byok/")  # sets the CSRF cookie
    token = client.cookies["csrftoken"].value
    r = client.post(
        "/api/v1/byok",
        {"provider_id": "minimax", "api_key": KEY},
        content_type=JSON,
        HTTP_X_CSRFTOKEN=token,
    )
    assert r.status_code == 201
