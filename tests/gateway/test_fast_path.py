"""The gateway's ASGI fast path (issue 8), through the real application under uvicorn.

Under ASGI `GatewayFastPathMiddleware` sends POST /api/v1/gateway/chat/completions straight to
its async view and applies by hand the parts of the middleware stack it needs. These tests check
over real HTTP that what the caller sees is what the full stack gives: the security headers of
any other route (SPEC S1/S2 hardening), the session caller with CSRF (SPEC 11.1, S2), usage
recorded after the response (SPEC G3), and the 401 envelope (SPEC 11.1). Transactional: the
server's threads see committed data.
"""

from __future__ import annotations

import time

import httpx
import pytest
from django.test import Client

from accounts.models import ApiToken
from gateway.models import GatewayRequest
from tests.gateway.conftest import BODY, URL
from tests.gateway.test_streaming import (
    STREAM_BODY,
    data_lines,
    http_client,
    token_for,
    wait_for,
)

pytestmark = pytest.mark.django_db(transaction=True)

CATALOG = "/api/v1/coding-plans/catalog"
PASSWORD = "pw-Secret-123!"  # make_user's default
# What SecurityMiddleware, XFrameOptionsMiddleware and our CSP middleware add to every response.
SECURITY_HEADERS = (
    "X-Content-Type-Options",
    "Content-Security-Policy",
    "X-Frame-Options",
    "Referrer-Policy",
    "Cross-Origin-Opener-Policy",
)


@pytest.fixture
def fast_path(monkeypatch) -> list[str]:
    """Records each call that took the fast path: the middleware looks the view up in
    `gateway.views` at call time (the URL resolver holds its own reference, so a call through
    the full stack is not recorded)."""
    from gateway import views

    calls: list[str] = []
    view = views.chat_completions

    async def spy(request):
        calls.append(request.method)
        return await view(request)

    monkeypatch.setattr(views, "chat_completions", spy)
    return calls


def security_headers(headers) -> dict[str, str | None]:
    return {name: headers.get(name) for name in SECURITY_HEADERS}


def log_in(client: httpx.Client, email: str, password: str = PASSWORD) -> None:
    """Log in through the server's own log-in page (full middleware stack): the CSRF cookie from
    the form, then the credentials; leaves the session and the rotated CSRF cookie in `client`."""
    assert client.get("/accounts/login/").status_code == 200
    response = client.post(
        "/accounts/login/",
        data={
            "username": email,
            "password": password,
            "csrfmiddlewaretoken": client.cookies["csrftoken"],
        },
    )
    assert response.status_code == 302, response.text[:500]
    assert "sessionid" in client.cookies


def assert_no_secret(response: httpx.Response, *secrets: str) -> None:
    # SPEC S1: no raw credential or token in any response, headers included.
    text = response.text + "\n".join(f"{k}: {v}" for k, v in response.headers.items())
    for secret in secrets:
        assert secret not in text


def usage_rows(user, *, streamed: bool):
    return list(GatewayRequest.objects.filter(user=user, streamed=streamed))


def test_bearer_call_carries_the_full_stacks_security_headers(
    asgi_server, fast_path, customer, buy_plan
):
    # SPEC G1: a bearer call is answered; SPEC S1/S2 hardening: the fast path adds the same
    # security headers as the full middleware stack does for any other route.
    _, credential = buy_plan(customer)
    headers = token_for(customer)
    with http_client(asgi_server.url) as client:
        gateway = client.post(URL, json=BODY, headers=headers)
        catalog = client.get(CATALOG, headers=headers)
    assert fast_path == ["POST"]  # the gateway call took the fast path; the catalog did not
    assert gateway.status_code == 200, gateway.text
    assert gateway.json()["choices"]
    assert catalog.status_code == 200, catalog.text
    assert gateway.headers["X-Content-Type-Options"] == "nosniff"
    assert gateway.headers["X-Frame-Options"] == "DENY"
    assert gateway.headers["Referrer-Policy"] == "same-origin"
    assert gateway.headers["Content-Security-Policy"]
    assert security_headers(gateway.headers) == security_headers(catalog.headers)
    # ... and the same as the full stack gives this very route (the test client is not ASGI,
    # so it does not take the fast path).
    full_stack = Client().post(
        URL, data=BODY, content_type="application/json", HTTP_AUTHORIZATION=headers["Authorization"]
    )
    assert full_stack.status_code == 200
    assert fast_path == ["POST"]
    assert security_headers(gateway.headers) == security_headers(full_stack.headers)
    assert_no_secret(gateway, credential, headers["Authorization"][len("Bearer ") :])


def test_session_caller_needs_the_csrf_token(asgi_server, fast_path, customer, buy_plan):
    # SPEC 11.1, S2: the session cookie works on the gateway, with CSRF on the POST.
    _, credential = buy_plan(customer)
    with http_client(asgi_server.url) as client:
        log_in(client, customer.email)
        without = client.post(URL, json=BODY)
        wrong = client.post(URL, json=BODY, headers={"X-CSRFToken": "x" * 32})
        ok = client.post(URL, json=BODY, headers={"X-CSRFToken": client.cookies["csrftoken"]})
        # The session is still good for the rest of the site after the fast path handled it.
        page = client.get(CATALOG)
    assert fast_path == ["POST"] * 3
    for refused in (without, wrong):
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "csrf_failed"
    assert ok.status_code == 200, ok.text
    assert ok.json()["choices"]
    assert security_headers(ok.headers) == security_headers(page.headers)
    # The session was used, so (as SessionMiddleware does on the full stack) caches are told.
    assert "cookie" in ok.headers.get("Vary", "").lower()
    assert page.status_code == 200
    for response in (without, wrong, ok, page):
        assert_no_secret(response, credential)
    wait_for(lambda: usage_rows(customer, streamed=False), timeout=2, what="usage")
    assert GatewayRequest.objects.count() == 1  # the refused calls recorded nothing


def test_usage_is_recorded_after_the_response(asgi_server, fast_path, customer, buy_plan):
    # SPEC G3: each completed request's usage is recorded against the subscription — written in
    # the response's close(), after the last byte, so poll for it.
    subscription_id, _ = buy_plan(customer)
    headers = token_for(customer)
    with http_client(asgi_server.url) as client:
        plain = client.post(URL, json=BODY, headers=headers)
        assert plain.status_code == 200, plain.text
        (row,) = wait_for(lambda: usage_rows(customer, streamed=False), timeout=2, what="usage")
        assert row.subscription_id == subscription_id
        assert row.model == "MiniMax-M2"
        assert row.prompt_tokens + row.completion_tokens > 0

        with client.stream("POST", URL, json=STREAM_BODY, headers=headers) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = list(response.iter_lines())
    assert data_lines(lines)[-1] == "data: [DONE]"
    assert fast_path == ["POST", "POST"]
    (row,) = wait_for(lambda: usage_rows(customer, streamed=True), timeout=2, what="usage")
    assert row.subscription_id == subscription_id
    assert row.prompt_tokens + row.completion_tokens > 0
    assert GatewayRequest.objects.filter(user=customer).count() == 2


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer not-a-real-token"}, {"Authorization": "Basic dTpw"}],
    ids=["no-credentials", "unknown-token", "not-bearer"],
)
def test_unauthenticated_call_gets_401(asgi_server, fast_path, headers):
    # SPEC 11.1: no valid token or session → 401 with the JSON error envelope.
    with http_client(asgi_server.url) as client:
        response = client.post(URL, json=BODY, headers=headers)
    assert fast_path == ["POST"]
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == "unauthenticated" and error["message"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert GatewayRequest.objects.count() == 0


def test_every_middleware_is_applied_on_the_fast_path_or_skipped_for_a_stated_reason(settings):
    """Issue 14: a security middleware added to MIDDLEWARE but not to the fast path would be
    bypassed by every gateway call under ASGI. The fast path names each entry it applies in-line
    (and builds exactly those) or says why the gateway does not need it."""
    from django.utils.module_loading import import_string

    from codingplans.middleware import GatewayFastPathMiddleware as FastPath

    assert settings.MIDDLEWARE[0] == "codingplans.middleware.GatewayFastPathMiddleware"
    rest = settings.MIDDLEWARE[1:]
    undecided = set(rest) - set(FastPath.APPLIED_INLINE) - set(FastPath.NOT_NEEDED)
    assert not undecided, f"decide how the gateway fast path applies {sorted(undecided)}"
    assert not set(FastPath.APPLIED_INLINE) & set(FastPath.NOT_NEEDED)

    async def view(request):  # an async chain, as under ASGI
        raise AssertionError

    fast_path = FastPath(view)
    for path, attribute in FastPath.APPLIED_INLINE.items():
        assert type(getattr(fast_path, attribute)) is import_string(path), path


def test_a_bearer_call_makes_no_thread_hop(asgi_server, customer, buy_plan, monkeypatch):
    # Issue 20: a bearer call is admitted (token and key, rate limits) and metered on the event
    # loop; nothing of it waits for a thread — streamed or not, the token's first use (which
    # notes it) or a later one.
    from asgiref import sync

    hops: list[str] = []
    original = sync.SyncToAsync.__call__

    async def counting(self, *args, **kwargs):
        hops.append(getattr(self.func, "__qualname__", repr(self.func)))
        return await original(self, *args, **kwargs)

    subscription_id, _ = buy_plan(customer)
    headers = token_for(customer)
    monkeypatch.setattr(sync.SyncToAsync, "__call__", counting)
    with http_client(asgi_server.url) as client:
        for _ in range(2):
            response = client.post(URL, json=BODY, headers=headers)
            assert response.status_code == 200, response.text
        with client.stream("POST", URL, json=STREAM_BODY, headers=headers) as response:
            assert data_lines(list(response.iter_lines()))[-1] == "data: [DONE]"
    rows = wait_for(lambda: GatewayRequest.objects.filter(user=customer).count() == 3, what="usage")
    assert rows
    assert hops == []
    assert GatewayRequest.objects.filter(subscription_id=subscription_id).count() == 3
    assert ApiToken.objects.get(user=customer).last_used_at is not None


def test_usage_still_queued_is_written_when_the_server_stops(
    asgi_server, customer, buy_plan, monkeypatch
):
    # Issue 20: usage recorded on the loop is written in batches; the server's end (the ASGI
    # lifespan) writes what is still queued.
    from gateway import services

    monkeypatch.setattr(services, "USAGE_WRITE_DELAY", 3600)
    buy_plan(customer)
    with http_client(asgi_server.url) as client:
        response = client.post(URL, json=BODY, headers=token_for(customer))
    assert response.status_code == 200, response.text
    time.sleep(0.2)
    assert not usage_rows(customer, streamed=False)  # queued
    asgi_server.stop()
    assert len(usage_rows(customer, streamed=False)) == 1
