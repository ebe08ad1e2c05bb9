"""The gateway through Django's test client (non-streaming): routing, errors, usage, rate limit.

SPEC G1 (routing with the caller's enabled MiniMax BYOK entry), G3 (error mapping, sanitized
messages, usage metering), 11.1 (auth, the error envelope). Streaming and the real-HTTP
acceptance run are in test_streaming.py; the key canary in test_canary.py.
"""

from __future__ import annotations

import email.utils
import json
import re
import socket
import time
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from accounts.tokens import create_api_token, revoke_api_token
from byok.models import ByokKey
from byok.services import add_key, update_key
from gateway.models import GatewayRequest
from subscriptions.actions import terminate_subscription
from subscriptions.models import Subscription
from tests.conftest import api_client_for
from tests.gateway.conftest import BODY, URL
from upstream.providers.minimax import RATE_LIMIT_CODES

pytestmark = pytest.mark.django_db

# The stand-in answers "Hello from the stand-in MiniMax server." (6 words) and counts the
# prompt's words: "hello there" → 2.
PROMPT_TOKENS = 2
COMPLETION_TOKENS = 6
UPSTREAM_TEXT = ("stand-in", "invalid api key", "internal error", "rate limited", "<html")


def post(client: Client, body=BODY, **extra):
    if isinstance(body, bytes | str):
        return client.post(URL, body, content_type="application/json", **extra)
    return client.post(URL, json.dumps(body), content_type="application/json", **extra)


def error_code(response) -> str:
    payload = response.json()
    assert set(payload) == {"error"} and set(payload["error"]) == {"code", "message"}, payload
    return payload["error"]["code"]


def chat_calls(standin) -> list[dict]:
    return standin.state.calls("/v1/chat/completions")


def entry_of(user) -> ByokKey:
    return ByokKey.objects.get(user=user, provider_id="minimax")


# -- G1: routing -------------------------------------------------------------------------------


def test_installed_entry_routes_with_the_assigned_credential(api, customer, buy_plan, standin):
    # SPEC G1: the installed entry's key (the assigned credential) goes upstream as Bearer,
    # the provider prefix is stripped, the rest of the body passes through.
    subscription_id, credential = buy_plan(customer)
    body = {**BODY, "temperature": 0.2, "max_tokens": 64}
    r = post(api, body)
    assert r.status_code == 200, r.content
    payload = r.json()
    assert payload["choices"][0]["message"]["content"] == "Hello from the stand-in MiniMax server."
    assert payload["model"] == "minimax/MiniMax-M2"
    assert payload["usage"]["prompt_tokens"] == PROMPT_TOKENS
    (call,) = chat_calls(standin)
    assert call["key"] == credential
    assert call["headers"]["authorization"] == f"Bearer {credential}"
    assert call["body"]["model"] == "MiniMax-M2"
    assert call["body"]["messages"] == BODY["messages"]
    assert call["body"]["temperature"] == 0.2 and call["body"]["max_tokens"] == 64
    # SPEC S3: nothing personal goes upstream; nor does the customer's own API token.
    sent = json.dumps(call)
    assert customer.email not in sent
    assert "cp_" not in call["headers"]["authorization"]
    assert GatewayRequest.objects.get().subscription_id == subscription_id


def test_own_key_routes_without_a_plan(api, customer, standin):
    # SPEC G1: "whatever its origin": the customer's own key is used the same way.
    add_key(user=customer, provider_id="minimax", api_key="sk-own-0001-abcd", now=timezone.now())
    r = post(api)
    assert r.status_code == 200, r.content
    assert chat_calls(standin)[-1]["key"] == "sk-own-0001-abcd"
    request = GatewayRequest.objects.get()
    assert request.subscription_id is None and request.user_id == customer.pk


@pytest.mark.parametrize("origin", ["installed", "own"])
def test_disabled_entry_gives_no_provider_key(api, customer, buy_plan, standin, origin):
    # SPEC G1: a disabled entry is as good as none, whatever its origin.
    if origin == "installed":
        buy_plan(customer)
    else:
        add_key(user=customer, provider_id="minimax", api_key="sk-own-0002", now=timezone.now())
    entry = entry_of(customer)
    update_key(user=customer, key_id=entry.pk, enabled=False, now=timezone.now())
    r = post(api)
    assert r.status_code == 403 and error_code(r) == "no_provider_key"
    assert "Buy a Coding Plan or add your own key" in r.json()["error"]["message"]
    assert chat_calls(standin) == []
    # Enabling it again routes again (disabling keeps an installed entry linked, SPEC B3).
    update_key(user=customer, key_id=entry.pk, enabled=True, now=timezone.now())
    assert post(api).status_code == 200
    assert (entry_of(customer).subscription_id is not None) == (origin == "installed")


def test_no_entry_gives_no_provider_key(api, standin):
    r = post(api)
    assert r.status_code == 403 and error_code(r) == "no_provider_key"
    assert chat_calls(standin) == []
    assert GatewayRequest.objects.count() == 0


def test_another_users_key_is_never_used(api, customer, make_user, buy_plan, standin):
    # SPEC S2: a token acts only for its owner.
    other = make_user(credits_usd=50)
    buy_plan(other)
    r = post(api)
    assert r.status_code == 403 and error_code(r) == "no_provider_key"
    assert chat_calls(standin) == []


@pytest.mark.parametrize(
    "model", ["openai/gpt-4o", "MiniMax-M2", "minimax/", "/MiniMax-M2", "", 42, None]
)
def test_unknown_provider(api, customer, buy_plan, standin, model):
    # SPEC G1: the model must be <provider>/<model> with a known provider.
    buy_plan(customer)
    body = {**BODY, "model": model}
    if model is None:
        del body["model"]
    r = post(api, body)
    assert r.status_code == 400 and error_code(r) == "unknown_provider"
    assert "minimax/MiniMax-M2" in r.json()["error"]["message"]
    assert chat_calls(standin) == []


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        b"[]",
        b'"hello"',
        {"model": "minimax/MiniMax-M2"},
        {"model": "minimax/MiniMax-M2", "messages": "hello"},
        {"model": "minimax/MiniMax-M2", "messages": []},
        {"model": "minimax/MiniMax-M2", "messages": {"role": "user"}},
    ],
    ids=["bad-json", "empty", "array", "string", "no-messages", "str-messages", "[]", "dict"],
)
def test_invalid_request(api, customer, buy_plan, standin, body):
    buy_plan(customer)
    r = post(api, body)
    assert r.status_code == 400 and error_code(r) == "invalid_request"
    assert chat_calls(standin) == []


def test_oversized_request_is_refused(api, customer, buy_plan, standin):
    buy_plan(customer)
    huge = {**BODY, "messages": [{"role": "user", "content": "x" * (3 * 1024 * 1024)}]}
    r = post(api, huge)
    assert r.status_code == 400 and error_code(r) == "invalid_request"
    assert "too large" in r.json()["error"]["message"]
    assert chat_calls(standin) == []


def test_anonymous_and_bad_tokens_get_401(customer, buy_plan, standin):
    # SPEC 11.1: the personal API token (or a session); anything else → 401.
    buy_plan(customer)
    issued = create_api_token(user=customer, now=timezone.now())
    revoke_api_token(user=customer, token_id=issued.token.pk, now=timezone.now())
    for client in (
        Client(),
        Client(HTTP_AUTHORIZATION=f"Bearer {issued.plaintext}"),  # revoked
        Client(HTTP_AUTHORIZATION="Bearer cp_not-a-real-token-000000"),
        Client(HTTP_AUTHORIZATION="Bearer "),
        Client(HTTP_AUTHORIZATION=f"Basic {issued.plaintext}"),
    ):
        r = post(client)
        assert r.status_code == 401 and error_code(r) == "unauthenticated"
        assert r["WWW-Authenticate"] == "Bearer"
    assert chat_calls(standin) == []


def test_session_caller_needs_csrf(customer, buy_plan, standin):
    # SPEC 11.1: the session cookie works too, with CSRF.
    buy_plan(customer)
    client = Client(enforce_csrf_checks=True)
    client.force_login(customer)
    r = post(client)
    assert r.status_code == 403 and error_code(r) == "csrf_failed"
    client.get("/byok/")  # sets the CSRF cookie
    r = post(client, HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value)
    assert r.status_code == 200, r.content
    assert len(chat_calls(standin)) == 1


@pytest.mark.parametrize("method", ["get", "put", "delete"])
def test_other_methods_get_405(api, method):
    r = getattr(api, method)(URL)
    assert r.status_code == 405 and error_code(r) == "method_not_allowed"
    assert r["Allow"] == "POST"


# -- G3: upstream failures ---------------------------------------------------------------------


def assert_sanitized(response) -> None:
    text = response.content.decode().lower()
    for fragment in UPSTREAM_TEXT:
        assert fragment not in text, (fragment, text)


def test_upstream_timeout_gives_504(api, customer, buy_plan, standin, settings):
    # SPEC G3: timeouts → 504 provider_timeout.
    settings.GATEWAY_TIMEOUT_SECONDS = 1
    buy_plan(customer)
    standin.state.configure({"failure": "timeout", "timeout_sleep_s": 2})
    started = time.monotonic()
    r = post(api)
    assert time.monotonic() - started < 1.9  # our timeout, not the stand-in's answer
    assert r.status_code == 504 and error_code(r) == "provider_timeout"
    assert_sanitized(r)
    assert GatewayRequest.objects.count() == 0


@pytest.mark.parametrize(
    ("failure", "status", "code"),
    [
        ("401", 502, "provider_key_rejected"),
        ("403", 502, "provider_key_rejected"),
        ("500", 502, "provider_error"),
        ("malformed", 502, "provider_error"),
        ("redirect", 502, "provider_error"),
    ],
)
def test_upstream_failures_map_to_gateway_errors(
    api, customer, buy_plan, standin, failure, status, code
):
    # SPEC G3: 401/403 upstream → 502 provider_key_rejected; anything else → 502
    # provider_error; messages are ours, never upstream text.
    buy_plan(customer)
    standin.state.configure({"failure": failure})
    r = post(api)
    assert r.status_code == status and error_code(r) == code
    assert "Retry-After" not in r
    assert_sanitized(r)
    assert GatewayRequest.objects.count() == 0
    # A redirect is not followed (the target would answer normally).
    assert [c["path"] for c in chat_calls(standin)] == ["/v1/chat/completions"]


def test_key_rejected_names_the_byok_settings(api, customer, buy_plan, standin):
    buy_plan(customer)
    standin.state.configure({"failure": "401"})
    r = post(api)
    assert "BYOK" in r.json()["error"]["message"]


def test_upstream_rejecting_the_key_itself(api, customer, standin):
    # The stand-in's own key check (a key it does not accept) → provider_key_rejected.
    add_key(user=customer, provider_id="minimax", api_key="invalid-key-000", now=timezone.now())
    r = post(api)
    assert r.status_code == 502 and error_code(r) == "provider_key_rejected"


def test_upstream_429_passes_on_retry_after(api, customer, buy_plan, standin):
    # SPEC G3: 429 upstream → 429 provider_rate_limited with Retry-After.
    buy_plan(customer)
    standin.state.configure({"failure": "429"})
    r = post(api)
    assert r.status_code == 429 and error_code(r) == "provider_rate_limited"
    assert r["Retry-After"] == "7"
    assert_sanitized(r)


def retry_after_seconds(response) -> int:
    """The 429's Retry-After: always there, and always a sane whole number of seconds."""
    value = response["Retry-After"]
    assert value.isascii() and value.isdigit(), value
    assert 1 <= int(value) <= 3600, value
    return int(value)


@pytest.mark.parametrize("value", ["-1", "1e9", "soon", "7.5", "²", "", None])
def test_upstream_429_without_a_usable_retry_after_gets_a_default(
    api, customer, buy_plan, standin, value
):
    # SPEC G3: 429 provider_rate_limited *with* Retry-After, also when upstream sent none or
    # one we cannot use (issue 13 item 9).
    headers = {} if value is None else {"Retry-After": value}
    buy_plan(customer)
    standin.state.configure({"response": {"status": 429, "body": {}, "headers": headers}})
    r = post(api)
    assert r.status_code == 429 and error_code(r) == "provider_rate_limited"
    assert retry_after_seconds(r) == 10


def test_upstream_429_retry_after_is_sanitized(api, customer, buy_plan, standin):
    # SPEC G3: a numeric Retry-After passes as a whole number of seconds, capped; an HTTP date
    # becomes the seconds until then (issue 13 item 9).
    buy_plan(customer)
    for sent, expected in (("  42 ", 42), ("0", 1), ("99999999999", 3600)):
        standin.state.configure(
            {"response": {"status": 429, "body": {}, "headers": {"Retry-After": sent}}}
        )
        r = post(api)
        assert r.status_code == 429 and retry_after_seconds(r) == expected, sent
    when = email.utils.format_datetime(timezone.now() + timedelta(seconds=90), usegmt=True)
    standin.state.configure(
        {"response": {"status": 429, "body": {}, "headers": {"Retry-After": when}}}
    )
    r = post(api)
    assert r.status_code == 429 and 85 <= retry_after_seconds(r) <= 91
    past = "Wed, 21 Oct 2015 07:28:00 GMT"
    standin.state.configure(
        {"response": {"status": 429, "body": {}, "headers": {"Retry-After": past}}}
    )
    assert retry_after_seconds(post(api)) == 1


@pytest.mark.parametrize("code", sorted(RATE_LIMIT_CODES))
@pytest.mark.parametrize("stream", [False, True])
def test_rate_limit_inside_a_200_gets_retry_after(api, customer, buy_plan, standin, code, stream):
    # SPEC G3: MiniMax signalling a rate limit in a 200 answer's `base_resp` (no Retry-After
    # header at all) → 429 provider_rate_limited with a Retry-After (issue 13 item 9); also
    # when the request asked for a stream and the answer is that JSON instead.
    buy_plan(customer)
    body = {"id": "x", "choices": None, "base_resp": {"status_code": code, "status_msg": "slow"}}
    standin.state.configure({"response": {"status": 200, "body": body}})
    r = post(api, {**BODY, "stream": stream})
    assert r.status_code == 429 and error_code(r) == "provider_rate_limited"
    assert retry_after_seconds(r) == 10
    assert "slow" not in r.content.decode()
    assert GatewayRequest.objects.count() == 0


@pytest.mark.parametrize(
    "canned",
    [
        {"status": 200, "raw": "not json at all"},
        {"status": 200, "body": ["a", "list"]},
        {"status": 200, "raw": ""},
        {"status": 400, "body": {"error": {"message": "bad request (upstream words)"}}},
        {"status": 404, "body": {"error": {"message": "no such model (upstream words)"}}},
        {"status": 503, "raw": "<html>upstream words</html>"},
    ],
)
def test_odd_upstream_answers_give_provider_error(api, customer, buy_plan, standin, canned):
    buy_plan(customer)
    standin.state.configure({"response": canned})
    r = post(api)
    assert r.status_code == 502 and error_code(r) == "provider_error"
    assert "upstream words" not in r.content.decode()
    assert GatewayRequest.objects.count() == 0


@pytest.mark.parametrize(
    ("code", "status", "error"),
    [
        (1004, 502, "provider_key_rejected"),
        (2049, 502, "provider_key_rejected"),
        (1002, 429, "provider_rate_limited"),
        (1039, 429, "provider_rate_limited"),
        (1013, 502, "provider_error"),
    ],
)
def test_errors_inside_a_200_are_mapped(api, customer, buy_plan, standin, code, status, error):
    # MiniMax may answer HTTP 200 with the error in `base_resp` and no choices.
    buy_plan(customer)
    body = {"id": "x", "choices": None, "base_resp": {"status_code": code, "status_msg": "words"}}
    standin.state.configure({"response": {"status": 200, "body": body}})
    r = post(api)
    assert r.status_code == status and error_code(r) == error
    assert "words" not in r.content.decode()
    assert GatewayRequest.objects.count() == 0
    # A real answer that also carries `base_resp` (code 0, or any code with choices) is fine.
    ok = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
        "base_resp": {"status_code": 0, "status_msg": "success"},
    }
    standin.state.configure({"response": {"status": 200, "body": ok}})
    assert post(api).status_code == 200


def test_unreachable_upstream_gives_provider_error(api, customer, buy_plan, settings):
    buy_plan(customer)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings.MINIMAX_API_BASE_URL = f"http://127.0.0.1:{port}"
    r = post(api)
    assert r.status_code == 502 and error_code(r) == "provider_error"
    assert str(port) not in r.content.decode()  # nothing about our upstream wiring
    assert GatewayRequest.objects.count() == 0


# -- G3: usage metering ------------------------------------------------------------------------


def test_usage_is_recorded_per_completed_request(api, customer, buy_plan, standin):
    # SPEC G3: subscription (installed entry), model, tokens from upstream usage, latency.
    standin.state.configure({"latency_ms": 120})
    subscription_id, _ = buy_plan(customer)
    body = {**BODY, "messages": [{"role": "user", "content": "one two three four five"}]}
    assert post(api, body).status_code == 200
    request = GatewayRequest.objects.get()
    assert request.user_id == customer.pk
    assert request.subscription_id == subscription_id
    assert request.provider_id == "minimax" and request.model == "MiniMax-M2"
    assert request.streamed is False
    assert (request.prompt_tokens, request.completion_tokens) == (5, COMPLETION_TOKENS)
    assert 120 <= request.latency_ms < 5000
    assert abs((timezone.now() - request.created_at).total_seconds()) < 10


def test_usage_without_a_usage_block_counts_the_request(api, customer, buy_plan, standin):
    body = {"choices": [{"message": {"role": "assistant", "content": "hi"}}], "usage": "odd"}
    buy_plan(customer)
    standin.state.configure({"response": {"status": 200, "body": body}})
    assert post(api).status_code == 200
    request = GatewayRequest.objects.get()
    assert (request.prompt_tokens, request.completion_tokens) == (0, 0)


def usage_on_detail_page(client: Client, subscription_id: int) -> tuple[int, int, int]:
    r = client.get(f"/subscriptions/coding-plans/{subscription_id}/")
    assert r.status_code == 200
    html = r.content.decode()
    assert "Usage this period" in html
    block = html[html.index('id="usage"') :]
    requests = re.search(r"<dt>Requests</dt><dd>(\d+)</dd>", block)
    tokens = re.search(r"(\d+) prompt · (\d+) completion", block)
    assert requests and tokens, block[:500]
    return int(requests.group(1)), int(tokens.group(1)), int(tokens.group(2))


def current_usage(api: Client, subscription_id: int) -> dict:
    r = api.get("/api/v1/coding-plans/current")
    assert r.status_code == 200, r.content
    (plan,) = [p for p in r.json()["subscriptions"] if p["subscription_id"] == subscription_id]
    return plan["usage"]


def test_usage_shows_on_the_detail_page_and_current_api(api, logged_in, customer, buy_plan):
    # SPEC G3 / issue 6: requests and tokens in the current period, on the page and the API.
    subscription_id, _ = buy_plan(customer)
    assert usage_on_detail_page(logged_in, subscription_id) == (0, 0, 0)
    assert current_usage(api, subscription_id) == {
        "requests": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
    }
    for _ in range(2):
        assert post(api).status_code == 200
    post(api, {**BODY, "model": "nope/x"})  # refused: not counted
    subscription = Subscription.objects.get(pk=subscription_id)
    # A request from before the current period is not counted.
    GatewayRequest.objects.create(
        user=customer,
        subscription=subscription,
        provider_id="minimax",
        model="MiniMax-M2",
        prompt_tokens=1000,
        completion_tokens=1000,
        created_at=subscription.current_period_start - timedelta(days=1),
    )
    expected = (2, 2 * PROMPT_TOKENS, 2 * COMPLETION_TOKENS)
    assert usage_on_detail_page(logged_in, subscription_id) == expected
    assert current_usage(api, subscription_id) == {
        "requests": expected[0],
        "prompt_tokens": expected[1],
        "completion_tokens": expected[2],
    }


def test_own_key_usage_is_not_counted_against_the_plan(api, logged_in, customer, buy_plan):
    subscription_id, _ = buy_plan(customer)
    assert post(api).status_code == 200
    entry = entry_of(customer)
    update_key(user=customer, key_id=entry.pk, api_key="sk-own-0003-wxyz", now=timezone.now())
    assert post(api).status_code == 200
    assert usage_on_detail_page(logged_in, subscription_id) == (1, PROMPT_TOKENS, 6)
    assert current_usage(api, subscription_id)["requests"] == 1
    assert GatewayRequest.objects.filter(subscription__isnull=True).count() == 1


# -- rate limit --------------------------------------------------------------------------------


def _not_at_a_minute_boundary() -> None:
    """The limit is a fixed one-minute window; keep the calls inside one window."""
    second = time.time() % 60
    if second > 55:
        time.sleep(60.2 - second)


def test_rate_limit_per_token(customer, buy_plan, standin, settings):
    settings.GATEWAY_RATE_LIMIT_PER_MINUTE = 3
    buy_plan(customer)
    first, second = api_client_for(customer), api_client_for(customer)
    _not_at_a_minute_boundary()
    for _ in range(3):
        assert post(first).status_code == 200
    r = post(first)
    assert r.status_code == 429 and error_code(r) == "rate_limited"
    assert len(chat_calls(standin)) == 3
    # Another token has its own budget.
    assert post(second).status_code == 200


def test_rate_limit_is_per_token_whatever_the_spelling(customer, buy_plan, standin, settings):
    # Issue 13 item 17: the budget belongs to the token, not to the header's spelling — the
    # scheme's case and the spaces after it do not buy a fresh budget.
    settings.GATEWAY_RATE_LIMIT_PER_MINUTE = 3
    buy_plan(customer)
    token = create_api_token(user=customer, now=timezone.now()).plaintext
    spellings = [f"Bearer {token}", f"bearer {token}", f"Bearer  {token}", f"BEARER {token} "]
    _not_at_a_minute_boundary()
    for header in spellings[:3]:
        assert post(Client(HTTP_AUTHORIZATION=header)).status_code == 200, header
    for header in spellings:
        r = post(Client(HTTP_AUTHORIZATION=header))
        assert r.status_code == 429 and error_code(r) == "rate_limited", header
    assert len(chat_calls(standin)) == 3


def test_rate_limit_per_user_across_their_tokens(customer, make_user, buy_plan, standin, settings):
    # Issue 13 item 17: making more tokens does not multiply the budget — all of a user's
    # tokens share GATEWAY_RATE_LIMIT_PER_USER_PER_MINUTE; another user has their own.
    settings.GATEWAY_RATE_LIMIT_PER_MINUTE = 3
    settings.GATEWAY_RATE_LIMIT_PER_USER_PER_MINUTE = 5
    buy_plan(customer)
    other = make_user(credits_usd=50)
    buy_plan(other)
    tokens = [api_client_for(customer) for _ in range(3)]
    _not_at_a_minute_boundary()
    assert [post(tokens[0]).status_code for _ in range(3)] == [200, 200, 200]
    assert [post(tokens[1]).status_code for _ in range(2)] == [200, 200]
    for client in tokens:  # the user's cap is used up, whichever token
        r = post(client)
        assert r.status_code == 429 and error_code(r) == "rate_limited"
    assert len(chat_calls(standin)) == 5
    assert post(api_client_for(other)).status_code == 200


# -- acceptance (the real-HTTP version is in test_streaming.py) --------------------------------


def test_acceptance_installed_then_own_key_then_termination(
    api, customer, make_user, buy_plan, standin
):
    # Issue 6 acceptance: buy Plus → the stand-in sees the assigned credential; replace the
    # installed entry with an own key → the next call carries it.
    subscription_id, credential = buy_plan(customer)
    r = post(api)
    assert r.status_code == 200 and r.json()["choices"]
    assert chat_calls(standin)[-1]["key"] == credential
    entry_id = api.get("/api/v1/byok").json()["keys"][0]["id"]
    r = api.patch(
        f"/api/v1/byok/{entry_id}",
        {"api_key": "sk-own-0004-mine"},
        content_type="application/json",
    )
    assert r.status_code == 200, r.content
    assert post(api).status_code == 200
    assert chat_calls(standin)[-1]["key"] == "sk-own-0004-mine"
    assert [r.subscription_id for r in GatewayRequest.objects.order_by("pk")] == [
        subscription_id,
        None,
    ]
    # On a second user: the plan is terminated while the entry is still linked → the entry
    # goes with it (SPEC B4) → no_provider_key.
    second = make_user(credits_usd=50)
    second_id, second_credential = buy_plan(second)
    second_api = api_client_for(second)
    assert post(second_api).status_code == 200
    assert chat_calls(standin)[-1]["key"] == second_credential
    assert entry_of(second).subscription_id == second_id
    terminate_subscription(subscription_id=second_id, actor="staff:1", now=timezone.now())
    calls = len(chat_calls(standin))
    r = post(second_api)
    assert r.status_code == 403 and error_code(r) == "no_provider_key"
    assert len(chat_calls(standin)) == calls
