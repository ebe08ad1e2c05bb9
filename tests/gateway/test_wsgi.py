"""The gateway under WSGI: `gunicorn codingplans.wsgi` with its default options (issue 13 item 3).

SPEC G1–G3 hold whatever server runs the application: under gunicorn's sync workers a streamed
call streams (G2) and is metered once it has ended, a non-streamed one answers as under ASGI,
and neither leaves an event loop behind ("Event loop is closed").
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
from django.utils import timezone

from accounts.tokens import create_api_token
from gateway.models import GatewayRequest
from tests.gateway.conftest import BODY, URL

pytestmark = pytest.mark.django_db(transaction=True)

STREAM_BODY = {**BODY, "stream": True}


def wait_for(predicate, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
    return value


def test_gateway_streams_and_answers_under_gunicorn(wsgi_server, customer, buy_plan, standin):
    # SPEC G1, G2, G3 (usage recorded once per completed request) under WSGI.
    subscription_id, credential = buy_plan(customer)
    token = create_api_token(user=customer, now=timezone.now()).plaintext
    standin.state.configure({"stream_chunks": 4, "stream_chunk_delay_ms": 150})
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=wsgi_server.url, headers=headers, timeout=20) as client:
        started = time.monotonic()
        first_at = None
        lines = []
        with client.stream("POST", URL, json=STREAM_BODY) as r:
            assert r.status_code == 200, r.read()
            assert r.headers["Content-Type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if first_at is None and line.startswith("data:"):
                    first_at = time.monotonic() - started
                lines.append(line)
        total = time.monotonic() - started
        data = [line[5:].strip() for line in lines if line.startswith("data:")]
        assert data[-1] == "[DONE]"
        events = [json.loads(d) for d in data[:-1]]
        text = "".join(
            c["delta"].get("content") or "" for e in events for c in e.get("choices", [])
        )
        assert text == "chunk0 chunk1 chunk2 chunk3 "
        assert events[-1]["usage"]["completion_tokens"] == 4
        # Relayed as it arrives (G2), not collected to the end first.
        assert first_at is not None and first_at < total - 0.3, (first_at, total)
        assert standin.state.calls("/v1/chat/completions")[-1]["key"] == credential

        r = client.post(URL, json=BODY)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "minimax/MiniMax-M2"
        assert r.json()["choices"][0]["message"]["content"]

        # An upstream failure maps as under ASGI (G3).
        standin.state.configure({"failure": "429"})
        r = client.post(URL, json=STREAM_BODY)
        assert r.status_code == 429 and r.json()["error"]["code"] == "provider_rate_limited"

    wait_for(lambda: GatewayRequest.objects.count() >= 2)  # recorded after the last byte
    rows = list(GatewayRequest.objects.order_by("id"))
    assert [(row.streamed, row.subscription_id) for row in rows] == [
        (True, subscription_id),
        (False, subscription_id),
    ]
    assert (rows[0].prompt_tokens, rows[0].completion_tokens) == (2, 4)
    assert (rows[1].prompt_tokens, rows[1].completion_tokens) == (2, 6)
    assert standin.state.stream_outcomes == ["completed"]
    wsgi_server.stop()
    log = wsgi_server.stderr()
    assert "Event loop is closed" not in log, log
    assert "Traceback" not in log and "ERROR" not in log, log
