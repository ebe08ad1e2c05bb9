"""The gateway on real HTTP: `codingplans.asgi.application` under uvicorn (what `make dev` runs).

SPEC G2 (server-sent events pass through as they arrive; the client going away closes the
upstream request; a slow stream does not tie up the server), G1/G3 over the wire, and the
issue 6 acceptance run end to end. Transactional: the server's threads see committed data.
"""

from __future__ import annotations

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from django.utils import timezone

from accounts.tokens import create_api_token
from gateway.models import GatewayRequest
from subscriptions.actions import terminate_subscription
from tests.gateway.conftest import BODY, PLUS, URL

pytestmark = pytest.mark.django_db(transaction=True)

STREAM_BODY = {**BODY, "stream": True}
# One SSL context for every test client: building one per client costs ~50 ms of CPU, which
# twenty clients started at once would take from the server under test (same process).
SSL_CONTEXT = httpx.create_ssl_context()


def http_client(base_url: str, **kwargs) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=20, verify=SSL_CONTEXT, **kwargs)


def token_for(user) -> dict[str, str]:
    return {"Authorization": f"Bearer {create_api_token(user=user, now=timezone.now()).plaintext}"}


def data_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("data:")]


def contents(lines: list[str]) -> str:
    text = ""
    for line in data_lines(lines):
        payload = line[5:].strip()
        if payload != "[DONE]":
            for choice in json.loads(payload).get("choices", []):
                text += choice.get("delta", {}).get("content") or ""
    return text


def stream(base_url: str, headers: dict[str, str], body=STREAM_BODY, *, on_first=None):
    """POST a streaming request; returns (status, headers, lines, seconds to the first `data:`
    line, total seconds)."""
    started = time.monotonic()
    first_at = None
    lines: list[str] = []
    with (
        http_client(base_url) as client,
        client.stream("POST", URL, json=body, headers=headers) as response,
    ):
        for line in response.iter_lines():
            if first_at is None and line.startswith("data:"):
                first_at = time.monotonic() - started
                if on_first:
                    on_first()
            lines.append(line)
        status, response_headers = response.status_code, response.headers
    return status, response_headers, lines, first_at, time.monotonic() - started


def wait_for(predicate, timeout: float = 5.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_first_chunk_arrives_before_the_last_is_sent(asgi_server, customer, buy_plan, standin):
    # SPEC G2: passed through as they arrive, not buffered to the end.
    subscription_id, credential = buy_plan(customer)
    standin.state.configure({"stream_chunks": 5, "stream_chunk_delay_ms": 300})
    first_seen: list[float] = []
    status, headers, lines, first_at, total = stream(
        asgi_server.url, token_for(customer), on_first=lambda: first_seen.append(time.time())
    )
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-cache"
    assert first_at is not None and first_at < 0.6, (first_at, total)
    assert total >= 1.5
    # The stand-in sends its last chunk ≥ 1.5 s after it got the request; the first chunk had
    # reached the client long before.
    (call,) = standin.state.calls("/v1/chat/completions")
    assert first_seen[0] < call["at"] + 1.0, (first_seen[0] - call["at"], total)
    data = data_lines(lines)
    assert data[-1] == "data: [DONE]"
    assert len(data) == 5 + 2  # five content chunks, the usage chunk, [DONE]
    assert contents(lines) == "chunk0 chunk1 chunk2 chunk3 chunk4 "
    usage = json.loads(data[-2][5:])["usage"]
    assert usage == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}
    assert call["key"] == credential and call["body"]["model"] == "MiniMax-M2"
    assert call["body"]["stream"] is True
    assert standin.state.stream_outcomes == ["completed"]
    # Usage is recorded once the stream has completed (SPEC G3).
    request = wait_for(lambda: GatewayRequest.objects.first(), what="usage")
    assert request.subscription_id == subscription_id and request.streamed is True
    assert (request.prompt_tokens, request.completion_tokens) == (2, 5)
    assert request.model == "MiniMax-M2" and request.latency_ms >= 1500


def test_upstream_disconnect_mid_stream_ends_with_an_error_event(
    asgi_server, customer, buy_plan, standin
):
    buy_plan(customer)
    standin.state.configure(
        {"stream_chunks": 5, "stream_chunk_delay_ms": 50, "stream_disconnect_after": 2}
    )
    status, _, lines, _, _ = stream(asgi_server.url, token_for(customer))
    assert status == 200
    data = data_lines(lines)
    assert "data: [DONE]" not in data
    assert contents(lines[:-1]) == "chunk0 chunk1 "
    error = json.loads(data[-1][5:])["error"]
    assert error["code"] == "provider_error"
    assert "stand-in" not in error["message"]
    # The error event is an event of its own (a blank line separates it from the last chunk).
    assert lines[lines.index(data[-1]) - 1] == ""
    assert standin.state.stream_outcomes == ["dropped"]
    time.sleep(0.3)
    assert GatewayRequest.objects.count() == 0  # not a completed request


def test_client_disconnect_closes_the_upstream_request(asgi_server, customer, buy_plan, standin):
    # SPEC G2: the client going away closes the upstream request.
    buy_plan(customer)
    standin.state.configure({"stream_chunks": 10, "stream_chunk_delay_ms": 200})
    headers = token_for(customer)
    with (
        http_client(asgi_server.url) as client,
        client.stream("POST", URL, json=STREAM_BODY, headers=headers) as r,
    ):
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data:"):
                break  # one chunk, then hang up
    # The stand-in's handler sees the broken pipe well before its 2 s stream would end.
    wait_for(lambda: standin.state.stream_outcomes, timeout=1.8, what="the upstream to close")
    assert standin.state.stream_outcomes == ["aborted"]
    time.sleep(0.3)
    assert GatewayRequest.objects.count() == 0


def test_slow_streams_do_not_block_a_page(asgi_server, make_user, buy_plan, standin):
    # Issue 6 acceptance: 20 concurrent slow streams do not block a plain page request.
    user = make_user(credits_usd=50)
    buy_plan(user)
    headers = token_for(user)
    standin.state.configure({"stream_chunks": 10, "stream_chunk_delay_ms": 200})
    n = 20
    first_chunks = threading.Semaphore(0)
    with ThreadPoolExecutor(max_workers=n) as pool:
        futures = [
            pool.submit(stream, asgi_server.url, headers, on_first=first_chunks.release)
            for _ in range(n)
        ]
        for _ in range(n):  # every stream is flowing
            assert first_chunks.acquire(timeout=10), "a stream did not start"
        latencies = []
        with http_client(asgi_server.url) as client:
            for _ in range(3):
                started = time.monotonic()
                page = client.get("/accounts/login/")
                latencies.append(time.monotonic() - started)
                assert page.status_code == 200
                assert 'name="password"' in page.text
        still_streaming = not standin.state.stream_outcomes
        results = [future.result(timeout=30) for future in futures]
    assert max(latencies) < 1.0, latencies
    assert still_streaming, "the streams ended before the page requests"
    for status, _, lines, _, total in results:
        assert status == 200 and data_lines(lines)[-1] == "data: [DONE]"
        assert total >= 2.0
    assert standin.state.stream_outcomes == ["completed"] * n
    wait_for(lambda: GatewayRequest.objects.count() == n, what="usage rows")


def test_asgi_serves_pages_with_static_css(asgi_server):
    # `make dev` serves the whole application under uvicorn, static files included.
    with http_client(asgi_server.url) as client:
        page = client.get("/accounts/login/")
        assert page.status_code == 200
        match = re.search(r'<link rel="stylesheet" href="([^"]+\.css)"', page.text)
        assert match, "no stylesheet on the log-in page"
        css = client.get(match.group(1))
        assert css.status_code == 200
        assert css.headers["content-type"].startswith("text/css")
        assert len(css.content) > 100


def test_stream_errors_before_the_first_byte_are_json(asgi_server, customer, buy_plan, standin):
    # SPEC G3 on a streaming request: upstream refused → an ordinary JSON error, not SSE.
    buy_plan(customer)
    headers = token_for(customer)
    standin.state.configure({"failure": "429"})
    with http_client(asgi_server.url) as client:
        r = client.post(URL, json=STREAM_BODY, headers=headers)
        assert r.status_code == 429 and r.json()["error"]["code"] == "provider_rate_limited"
        assert r.headers["retry-after"] == "7"
        # A 200 that is not an event stream (here an HTML page) is never relayed.
        standin.state.configure({"failure": "malformed"})
        r = client.post(URL, json=STREAM_BODY, headers=headers)
        assert r.status_code == 502 and r.json()["error"]["code"] == "provider_error"
        assert "html" not in r.text
        standin.state.configure({"failure": None})
        r = client.post(URL, json={**STREAM_BODY, "model": "other/x"}, headers=headers)
        assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_provider"
        r = client.post(URL, json=STREAM_BODY)
        assert r.status_code == 401
    assert GatewayRequest.objects.count() == 0


def test_acceptance_end_to_end_on_real_http(asgi_server, customer, make_user, stock, standin):
    # Issue 6 acceptance: buy Plus → call with the API token → the stand-in receives the
    # assigned credential as Bearer → the response comes back; replace the installed entry with
    # an own key → the next call carries it; terminate a plan (entry still linked) →
    # no_provider_key.
    (credential,) = stock(PLUS)
    headers = token_for(customer)
    with http_client(asgi_server.url, headers=headers) as client:
        r = client.post(
            "/api/v1/coding-plans/purchases",
            json={"plan_id": PLUS},
            headers={"Idempotency-Key": "acceptance-1"},
        )
        assert r.status_code == 201, r.text
        subscription_id = r.json()["subscription"]["id"]
        standin.state.requests.clear()

        r = client.post(URL, json=BODY)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"]
        call = standin.state.calls("/v1/chat/completions")[-1]
        assert call["headers"]["authorization"] == f"Bearer {credential}"
        assert call["body"]["model"] == "MiniMax-M2"

        (entry,) = client.get("/api/v1/byok").json()["keys"]
        assert entry["managed_by"] == "coding_plan"
        r = client.patch(f"/api/v1/byok/{entry['id']}", json={"api_key": "sk-own-acceptance-1"})
        assert r.status_code == 200, r.text
        status, _, lines, _, _ = stream(asgi_server.url, headers)
        assert status == 200 and data_lines(lines)[-1] == "data: [DONE]"
        call = standin.state.calls("/v1/chat/completions")[-1]
        assert call["headers"]["authorization"] == "Bearer sk-own-acceptance-1"

        usage = client.get("/api/v1/coding-plans/current").json()["subscriptions"][0]["usage"]
        assert usage["requests"] == 1  # the own-key call is not the plan's usage

    second = make_user(credits_usd=50)
    stock(PLUS)
    second_headers = token_for(second)
    with http_client(asgi_server.url, headers=second_headers) as client:
        r = client.post(
            "/api/v1/coding-plans/purchases",
            json={"plan_id": PLUS},
            headers={"Idempotency-Key": "acceptance-2"},
        )
        assert r.status_code == 201, r.text
        second_id = r.json()["subscription"]["id"]
        assert client.post(URL, json=BODY).status_code == 200
        (entry,) = client.get("/api/v1/byok").json()["keys"]
        assert entry["subscription_id"] == second_id  # still linked
        terminate_subscription(subscription_id=second_id, actor="staff:1", now=timezone.now())
        calls = len(standin.state.calls("/v1/chat/completions"))
        r = client.post(URL, json=BODY)
        assert r.status_code == 403 and r.json()["error"]["code"] == "no_provider_key"
        assert len(standin.state.calls("/v1/chat/completions")) == calls
    assert GatewayRequest.objects.filter(subscription_id=subscription_id).count() == 1
