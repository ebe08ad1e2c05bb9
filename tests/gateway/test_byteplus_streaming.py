"""BytePlus through the gateway served as `make dev` serves it (uvicorn, ASGI): `byteplus/<model>`
streams from the caller's BytePlus entry as the events arrive, metered (SPEC G2, G3, V4)."""

from __future__ import annotations

import json

import pytest

from gateway.models import GatewayRequest
from tests.gateway.test_streaming import data_lines, stream, token_for, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

LITE = "byteplus-coding-plan-lite"
BODY = {
    "model": "byteplus/ark-code-latest",
    "messages": [{"role": "user", "content": "hello there"}],
    "stream": True,
}


def test_byteplus_stream_under_asgi(asgi_server, customer, buy_plan, byteplus_standin):
    subscription_id, credential = buy_plan(customer, LITE)
    with byteplus_standin.state.lock:
        byteplus_standin.state.requests.clear()
    byteplus_standin.state.configure({"stream_chunks": 4, "stream_chunk_delay_ms": 300})
    status, headers, lines, first_at, total = stream(
        asgi_server.url, token_for(customer), body=BODY
    )
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert first_at is not None and first_at < 0.6 and total >= 1.2, (first_at, total)
    data = data_lines(lines)
    assert data[-1] == "data: [DONE]"
    # OpenAI's shape: four content chunks, the finishing chunk, the usage chunk (asked for).
    assert len(data) == 4 + 2 + 1
    assert json.loads(data[-2][5:])["usage"]["completion_tokens"] == 4
    (call,) = byteplus_standin.state.calls("/api/coding/v3/chat/completions")
    assert call["key"] == credential and call["body"]["model"] == "ark-code-latest"
    assert call["body"]["stream_options"] == {"include_usage": True}
    request = wait_for(lambda: GatewayRequest.objects.first(), what="usage")
    assert (request.provider_id, request.subscription_id) == ("byteplus", subscription_id)
    assert request.streamed is True and (request.prompt_tokens, request.completion_tokens) == (
        2,
        4,
    )
