"""The MiniMax client against the stand-in server over loopback (SPEC 11.3, B1, I3, S1)."""

from __future__ import annotations

import gzip
import json
import socket
import time

import httpx
import pytest

from standins.minimax import REDIRECT_PREFIX
from upstream.errors import UpstreamError
from upstream.providers import http as client_http
from upstream.providers.base import KEY_CHECK_ERRORS, KeyCheck
from upstream.providers.minimax import PROVIDER

check_key = PROVIDER.check_key
request_json = PROVIDER.request_json

KEY = "sk-live-upstream0123456789abcdef"
CHAT = "/v1/chat/completions"
# Wording the stand-in puts in its error bodies: none of it may reach our messages (SPEC S1).
PROVIDER_TEXT = ("stand-in", "internal error", "invalid api key", "rate limited", "not json")


def assert_clean(result: KeyCheck) -> None:
    text = f"{result!r} {result} {result.message}"
    assert KEY not in text
    assert KEY[8:] not in text
    for fragment in PROVIDER_TEXT:
        assert fragment not in text.lower()


def test_valid_key_passes(standin):
    assert check_key(KEY) == KeyCheck(True)
    assert len(standin.state.calls(CHAT)) == 1


def test_request_carries_bearer_key_and_the_spec_validation_body(standin):
    # SPEC 11.3: Authorization: Bearer <key>; exactly this minimal body.
    check_key(KEY)
    (call,) = standin.state.calls(CHAT)
    assert call["method"] == "POST"
    assert call["headers"]["authorization"] == f"Bearer {KEY}"
    assert call["body"] == {
        "model": "MiniMax-M2",
        "messages": [{"role": "user", "content": "Say hi"}],
        "max_tokens": 1,
    }


@pytest.mark.parametrize("status", ["401", "403"])
def test_rejected_status_means_invalid_key(standin, status):
    standin.state.configure({"failure": status})
    result = check_key(KEY)
    assert result == KeyCheck(False, "invalid_key")
    assert_clean(result)


def test_key_the_provider_does_not_know_is_invalid(standin):
    standin.state.configure({"accepted_keys": ["sk-some-other-key-1234"]})
    assert check_key(KEY) == KeyCheck(False, "invalid_key")
    assert check_key("sk-some-other-key-1234") == KeyCheck(True)


@pytest.mark.parametrize("status", ["500", "429"])
def test_server_error_is_http(standin, status):
    standin.state.configure({"failure": status})
    result = check_key(KEY)
    assert result == KeyCheck(False, "http")
    assert_clean(result)


def test_malformed_json_is_invalid_response(standin):
    standin.state.configure({"failure": "malformed"})
    result = check_key(KEY)
    assert result == KeyCheck(False, "invalid_response")
    assert_clean(result)


def test_oversize_body_is_invalid_response_without_reading_it_all(standin):
    standin.state.configure({"failure": "oversize"})
    result = check_key(KEY)
    assert result == KeyCheck(False, "invalid_response")
    assert_clean(result)


def test_request_json_refuses_oversize_body(standin):
    standin.state.configure({"failure": "oversize"})
    with pytest.raises(UpstreamError) as caught:
        request_json("POST", CHAT, KEY, body={})
    assert caught.value.kind == "invalid_response"
    assert KEY not in str(caught.value)


def test_body_just_under_the_bound_is_read(standin):
    pad = "x" * (client_http.MAX_BODY_BYTES - 200)
    body = {"choices": [{"finish_reason": "stop"}], "pad": pad}
    standin.state.configure({"response": {"status": 200, "body": body}})
    assert check_key(KEY) == KeyCheck(True)


def test_compressed_body_is_refused(standin):
    # A compressed body could expand far past the bound; we ask for identity and refuse others.
    raw = gzip.compress(json.dumps({"choices": [{"finish_reason": "stop"}]}).encode())
    standin.state.configure(
        {
            "response": {
                "status": 200,
                "raw": raw.decode("latin-1"),
                "headers": {"Content-Encoding": "gzip"},
            }
        }
    )
    assert check_key(KEY) == KeyCheck(False, "invalid_response")
    (call,) = standin.state.calls(CHAT)
    assert call["headers"]["accept-encoding"] == "identity"


def test_deeply_nested_json_is_invalid_response_not_a_crash(standin):
    standin.state.configure({"response": {"status": 200, "raw": "[" * 100_000}})
    assert check_key(KEY) == KeyCheck(False, "invalid_response")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"choices": []},
        {"choices": [{}]},
        {"choices": [{"finish_reason": "tool_calls"}]},
        {"choices": [{"finish_reason": ["stop"]}]},
        {"choices": "stop"},
        ["choices"],
        "stop",
        None,
        {"base_resp": {"status_code": 1004, "status_msg": "login fail: invalid api key"}},
    ],
)
def test_unexpected_success_shapes_are_invalid_response(standin, body):
    standin.state.configure({"response": {"status": 200, "body": body}})
    result = check_key(KEY)
    assert result == KeyCheck(False, "invalid_response")
    assert_clean(result)


@pytest.mark.parametrize("finish", ["stop", "length"])
def test_finish_reason_stop_or_length_is_valid(standin, finish):
    standin.state.configure(
        {"response": {"status": 200, "body": {"choices": [{"finish_reason": finish}]}}}
    )
    assert check_key(KEY) == KeyCheck(True)


def test_timeout_is_network_and_returns_within_the_bound(standin, settings):
    settings.MINIMAX_TIMEOUT_SECONDS = 0.4
    standin.state.configure({"failure": "timeout", "timeout_sleep_s": 1.2})
    started = time.monotonic()
    result = check_key(KEY)
    elapsed = time.monotonic() - started
    assert result == KeyCheck(False, "network")
    assert_clean(result)
    assert 0.3 < elapsed < 1.0, elapsed


def test_slow_trickling_body_is_cut_off_at_the_deadline(standin, settings):
    # Each byte arrives well within the read timeout; the whole call must still be bounded.
    settings.MINIMAX_TIMEOUT_SECONDS = 0.4
    standin.state.configure(
        {"failure": "slow_body", "timeout_sleep_s": 3, "trickle_interval_s": 0.05}
    )
    started = time.monotonic()
    result = check_key(KEY)
    elapsed = time.monotonic() - started
    assert result == KeyCheck(False, "network")
    assert elapsed < 1.0, elapsed


def test_timeout_is_capped_at_ten_seconds(settings):
    settings.MINIMAX_TIMEOUT_SECONDS = 60
    t = client_http.client_timeout(PROVIDER.timeout_seconds())
    assert t.read == t.write == t.pool == 10.0
    assert t.connect <= 5.0


def test_redirect_is_not_followed(standin):
    standin.state.configure({"failure": "redirect"})
    result = check_key(KEY)
    assert result == KeyCheck(False, "http")
    assert [c["path"] for c in standin.state.calls()] == [CHAT]
    # The redirect target would have accepted the key: following it would have passed the check.
    response = httpx.post(
        standin.url + REDIRECT_PREFIX + CHAT,
        json=PROVIDER.validation_body(),
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert response.status_code == 200
    assert response.json()["choices"][0]["finish_reason"] == "length"


def test_unreachable_server_is_network(settings):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings.MINIMAX_API_BASE_URL = f"http://127.0.0.1:{port}"
    result = check_key(KEY)
    assert result == KeyCheck(False, "network")
    assert_clean(result)


def test_malformed_base_url_is_network(settings):
    settings.MINIMAX_API_BASE_URL = "ht!tp://nowhere"
    assert check_key(KEY) == KeyCheck(False, "network")


@pytest.mark.parametrize(
    "bad", ["", "sk-has space-123456", "sk-line\nbreak-1234", "sk-ünïcode-12345"]
)
def test_key_that_cannot_be_a_header_is_invalid_without_a_call(standin, bad):
    result = check_key(bad)
    assert result == KeyCheck(False, "invalid_key")
    assert standin.state.calls() == []


def test_shared_client_is_reused_and_left_open(standin):
    # Inventory validation passes one client to many checks (SPEC I3).
    with PROVIDER.make_client() as http:
        assert check_key(KEY, client=http) == KeyCheck(True)
        assert check_key("invalid-key-123456", client=http) == KeyCheck(False, "invalid_key")
        assert not http.is_closed
    assert len(standin.state.calls(CHAT)) == 2


def test_quota_endpoint_via_request_json(standin):
    status, data = request_json("GET", "/v1/token_plan/remains", KEY)
    assert status == 200
    assert data["base_resp"]["status_code"] == 0
    (row,) = data["model_remains"]
    assert row["model_name"] == "general"
    (call,) = standin.state.calls("/v1/token_plan/remains")
    assert call["headers"]["authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize(
    "mode",
    ["timeout", "500", "401", "403", "429", "malformed", "oversize", "redirect", "slow_body"],
)
def test_no_failure_mode_message_carries_the_key_or_provider_text(standin, settings, mode):
    settings.MINIMAX_TIMEOUT_SECONDS = 0.3
    standin.state.configure({"failure": mode, "timeout_sleep_s": 0.8, "trickle_interval_s": 0.05})
    result = check_key(KEY)
    assert not result.ok
    assert result.error in KEY_CHECK_ERRORS
    assert_clean(result)
    try:
        request_json("POST", CHAT, KEY, body=PROVIDER.validation_body())
    except UpstreamError as exc:
        assert KEY not in str(exc) and KEY not in repr(exc)
        assert exc.__cause__ is None
        assert exc.__context__ is None or exc.__suppress_context__
        for fragment in PROVIDER_TEXT:
            assert fragment not in str(exc).lower()
