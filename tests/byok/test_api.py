import pytest

pytestmark = pytest.mark.django_db


def test_add_key_returns_only_hint(api):
    # SPEC B1: responses show only a masked hint.
    r = api.post("/api/v1/byok", {"provider_id": "minimax", "api_key": "sk-live-abcdef123456"}, content_type="application/json")
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["key_hint"] == "…3456"
    assert "abcdef123456" not in r.content.decode()
    r = api.post("/api/v1/byok", {"provider_id": "minimax", "api_key": "sk-live-other12345678"}, content_type="application/json")
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "provider_slot_occupied"


def test_key_test_calls_standin(api, standin):
    r = api.post("/api/v1/byok", {"provider_id": "minimax", "api_key": "sk-live-abcdef123456"}, content_type="application/json")
    key_id = r.json()["id"]
    r = api.post(f"/api/v1/byok/{key_id}/test")
    assert r.json() == {"ok": True, "error": None}
    assert standin.state.calls("/v1/chat/completions")[0]["key"] == "sk-live-abcdef123456"
