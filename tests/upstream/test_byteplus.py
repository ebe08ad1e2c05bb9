"""The BytePlus module (SPEC 11.4, V3, V4) and its stand-in: key checks by prefix, OpenAI-style
errors read into our kinds, the request shaping of a streamed gateway call, no quota."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import api_client_for
from upstream.providers import registry
from upstream.providers.base import KeyCheck, Kind
from upstream.providers.byteplus import PROVIDER, read_error_body

CHAT = "/api/coding/v3/chat/completions"
ROOT = Path(__file__).resolve().parents[2]


def test_registered_under_its_id_with_the_catalogs_name():
    assert registry.provider("byteplus") is PROVIDER
    assert PROVIDER.name == "BytePlus"
    assert PROVIDER.reports_quota is False
    assert "does not report usage" in PROVIDER.quota_not_reported_message()


def test_settings_defaults():
    # SPEC 11.4: the defaults when the environment sets nothing.
    source = (ROOT / "codingplans" / "settings.py").read_text()
    assert '"BYTEPLUS_API_BASE_URL", "https://ark.ap-southeast.bytepluses.com/api/coding/v3"' in (
        source
    )
    assert '"BYTEPLUS_VALIDATION_MODEL", "ark-code-latest"' in source


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("bp-good-key-0000001", KeyCheck(True)),
        ("bp-invalid-00000001", KeyCheck(False, "invalid_key")),
        ("bp-500-key-00000001", KeyCheck(False, "http")),
        ("bp-429-key-00000001", KeyCheck(False, "http")),
        ("bp-slow-key-0000001", KeyCheck(False, "network")),
    ],
)
def test_key_check_against_the_stand_in(byteplus_standin, settings, key, expected):
    # SPEC 11.4, V3: a one-token chat completion with the validation model; 401/403 invalid.
    settings.BYTEPLUS_TIMEOUT_SECONDS = 0.3
    settings.BYTEPLUS_VALIDATION_MODEL = "ark-validation-model"
    byteplus_standin.state.configure({"timeout_sleep_s": 0.8})
    result = PROVIDER.check_key(key)
    assert result == expected
    assert "BytePlus" in result.message and key not in result.message
    (call,) = byteplus_standin.state.calls()
    assert call["path"] == CHAT and call["key"] == key
    assert call["body"] == {
        "model": "ark-validation-model",
        "messages": [{"role": "user", "content": "Say hi"}],
        "max_tokens": 1,
    }


def test_a_200_without_a_finish_reason_is_not_a_valid_key(byteplus_standin):
    byteplus_standin.state.configure({"response": {"status": 200, "body": {"choices": []}}})
    assert PROVIDER.check_key("bp-good-key-0000001") == KeyCheck(False, "invalid_response")


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        ("0c1a1234-5678-90ab-cdef-1234567890ab", True),
        ("bp-good-key-0000001", True),
        ("short-key", False),
        ("has space in it 12345", False),
        ("x" * 257, False),
    ],
)
def test_key_shape(key, valid):
    assert PROVIDER.has_key_shape(key) is valid


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        ({"choices": [{"finish_reason": "stop"}]}, Kind.OK),
        ({"error": {"code": "AuthenticationError", "message": "x"}}, Kind.KEY_REJECTED),
        ({"error": {"code": "RateLimitExceeded.EndpointRPMExceeded"}}, Kind.RATE_LIMITED),
        ({"error": {"code": "ServerOverloaded"}}, Kind.RATE_LIMITED),
        ({"error": {"code": "InternalServiceError"}}, Kind.PROVIDER_ERROR),
        ({"error": {"code": 7}}, Kind.PROVIDER_ERROR),
        ({"error": {"code": "AuthenticationError"}, "choices": [{"x": 1}]}, Kind.OK),
    ],
)
def test_openai_style_errors_in_a_200(payload, kind):
    assert read_error_body(payload).kind is kind


def test_a_stream_asks_for_its_usage_unless_the_caller_chose():
    # SPEC G3: usage is metered; OpenAI-style APIs stream it only when asked.
    body = {"model": "byteplus/x", "messages": [], "stream": True}
    assert PROVIDER.upstream_body(body, "x")["stream_options"] == {"include_usage": True}
    chosen = {**body, "stream_options": {"include_usage": False}}
    assert PROVIDER.upstream_body(chosen, "x")["stream_options"] == {"include_usage": False}
    assert "stream_options" not in PROVIDER.upstream_body({**body, "stream": False}, "x")
    assert PROVIDER.upstream_body(body, "x")["model"] == "x"


def _gateway(api, stream=False):
    body = {"model": "byteplus/ark-code-latest", "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        body["stream"] = True
    return api.post(
        "/api/v1/gateway/chat/completions", json.dumps(body), content_type="application/json"
    )


@pytest.mark.parametrize(
    ("error_code", "status", "code"),
    [
        ("AuthenticationError", 502, "provider_key_rejected"),
        ("RateLimitExceeded", 429, "provider_rate_limited"),
        ("InternalServiceError", 502, "provider_error"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_gateway_maps_errors_in_a_200(
    byteplus_standin, make_user, error_code, status, code, stream
):
    # SPEC G3, V4: an OpenAI-style error answered with 200 (also to a streaming request).
    byteplus_standin.state.configure(
        {"response": {"status": 200, "body": {"error": {"code": error_code, "message": "SECRET"}}}}
    )
    api = api_client_for(make_user())
    api.post(
        "/api/v1/byok",
        {"provider_id": "byteplus", "api_key": "bp-good-key-0000001"},
        content_type="application/json",
    )
    r = _gateway(api, stream)
    assert r.status_code == status and r.json()["error"]["code"] == code
    assert "SECRET" not in r.content.decode()


def test_gateway_rate_limit_by_key_prefix_passes_retry_after(byteplus_standin, make_user):
    api = api_client_for(make_user())
    api.post(
        "/api/v1/byok",
        {"provider_id": "byteplus", "api_key": "bp-429-key-00000001"},
        content_type="application/json",
    )
    r = _gateway(api)
    assert r.status_code == 429 and r["Retry-After"] == "7"


def test_stand_in_serves_the_openai_shapes(byteplus_standin):
    headers = {"Authorization": "Bearer bp-good-key-0000001"}
    r = httpx.post(
        byteplus_standin.api_url + "/chat/completions",
        json={"model": "ark-code-latest", "messages": [{"role": "user", "content": "hi"}]},
        headers=headers,
    )
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "stop"
    r = httpx.post(
        byteplus_standin.api_url + "/chat/completions",
        json={"messages": []},
        headers={"Authorization": "Bearer bp-invalid-00000001"},
    )
    assert r.status_code == 401 and r.json()["error"]["code"] == "AuthenticationError"
    assert (
        httpx.get(byteplus_standin.url + "/v1/token_plan/remains", headers=headers).status_code
        == 404
    )
