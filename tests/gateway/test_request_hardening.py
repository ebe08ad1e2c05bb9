"""Hostile request bodies and what a failing view frame could show (issue 13 item 16).

SPEC G1 / 11.1: a body the gateway cannot safely handle is a 400 `invalid_request` in the
standard envelope, never a 500; SPEC S1: the key never sits in the view's frame, so no error page
or report (Django's technical 500 with DEBUG on lists every frame's local variables) can show it.
"""

from __future__ import annotations

import json
import sys
import threading

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient
from django.utils import timezone

from accounts.tokens import create_api_token
from gateway import proxy, views
from gateway.models import GatewayRequest
from tests.conftest import api_client_for
from tests.gateway.conftest import BODY, URL
from tests.gateway.test_canary import install

# The view (gateway/views.py) and the proxy it hands an admitted request to (gateway/proxy.py).
VIEW_FRAMES = {
    (views.__file__.removesuffix("c"), "chat_completions"),
    (views.__file__.removesuffix("c"), "chat_completions_sync"),
    (proxy.__file__.removesuffix("c"), "forward"),
    (proxy.__file__.removesuffix("c"), "forward_sync"),
}


def nested(depth: int) -> str:
    """JSON text of a value `depth` containers deep (alternating objects and lists), built as
    text: json.dumps itself gives up on deep values."""
    opens = "".join('{"n": ' if level % 2 == 0 else "[" for level in range(depth))
    closes = "".join("}" if level % 2 == 0 else "]" for level in reversed(range(depth)))
    return opens + '"leaf"' + closes


def body_with_depth(depth: int) -> str:
    """A chat body whose deepest value sits `depth` containers down (the body itself, the
    messages list and a message are three of them)."""
    head = json.dumps({**BODY, "messages": []})[:-2]  # ... "messages": [
    return head + '{"role": "user", "content": "hello", "extra": ' + nested(depth - 3) + "}]}"


def depth_of(value) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    return 0


def install_key(user, key: str, standin) -> None:
    """Install `key` by buying a plan; the stand-in's log then shows only gateway traffic."""
    install(user, key)
    with standin.state.lock:
        standin.state.requests.clear()


@pytest.mark.django_db
@pytest.mark.parametrize("depth", [65, 200, 500, 800, 900, 950, 5000])
def test_deeply_nested_body_is_invalid_request(customer, settings, standin, depth):
    # SPEC G1/11.1 (issue 13 item 16): a body nested deeper than 64 levels → 400
    # invalid_request in the error envelope, nothing sent upstream; with DEBUG on too, where a
    # 500 would show Django's technical page (900 levels used to crash the upstream encoding).
    key = "".join(("canary", "Nested", "3Hq9"))
    install_key(customer, key, standin)
    settings.DEBUG = True
    client = api_client_for(customer)
    client.raise_request_exception = False
    body = body_with_depth(depth)
    if depth <= 200:
        assert depth_of(json.loads(body)) == depth
    r = client.post(URL, body, content_type="application/json")
    assert r.status_code == 400, r.content[:300]
    assert r.json() == {
        "error": {"code": "invalid_request", "message": r.json()["error"]["message"]}
    }
    assert key not in r.content.decode()
    assert standin.state.calls("/v1/chat/completions") == []
    assert GatewayRequest.objects.count() == 0


@pytest.mark.django_db
def test_nesting_up_to_the_limit_is_passed_on(customer, standin):
    # 64 levels (tool schemas nest, but not this far) still go through, unchanged.
    install_key(customer, "sk-nesting-limit-0001", standin)
    body = body_with_depth(64)
    r = api_client_for(customer).post(URL, body, content_type="application/json")
    assert r.status_code == 200, r.content[:300]
    (call,) = standin.state.calls("/v1/chat/completions")
    assert call["body"]["messages"] == json.loads(body)["messages"]


@pytest.mark.django_db
def test_brackets_inside_strings_do_not_count(customer, standin):
    install_key(customer, "sk-nesting-strings-0002", standin)
    content = "[" * 500 + "{" * 500 + '\\"[[[' + "]" * 20
    body = json.dumps({**BODY, "messages": [{"role": "user", "content": content}]})
    r = api_client_for(customer).post(URL, body, content_type="application/json")
    assert r.status_code == 200, r.content[:300]


class FrameWatch:
    """Every local variable of the gateway view's and proxy's frames, at every line they run
    and when they return: what an error page or report would list for that frame (by repr)."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.frames = 0
        self.leaks: list[str] = []

    def _local(self, frame, event, arg):
        if event in ("line", "return"):
            for name, value in frame.f_locals.items():
                try:
                    shown = value if isinstance(value, str) else repr(value)
                except Exception:
                    continue
                if self.secret in shown:
                    self.leaks.append(f"{frame.f_code.co_name}: {name}")
        return self._local

    def _global(self, frame, event, arg):
        code = frame.f_code
        if (code.co_filename, code.co_name) in VIEW_FRAMES:
            self.frames += 1
            return self._local
        return None

    def __enter__(self) -> FrameWatch:
        threading.settrace(self._global)
        sys.settrace(self._global)
        return self

    def __exit__(self, *exc) -> None:
        sys.settrace(None)
        threading.settrace(None)


@pytest.mark.django_db(transaction=True)
def test_the_view_frames_never_hold_the_key(make_user, standin):
    # SPEC S1 (issue 13 item 16): the Authorization header is built in a helper, so no local
    # variable of the view — what Django's DEBUG technical 500 page and error reports list —
    # holds the key, on the WSGI path (test client) and the ASGI path (AsyncClient), streamed
    # or not.
    key = "".join(("canary", "Frame", "8Wd2"))
    user = make_user(credits_usd=50)
    install(user, key)
    token = create_api_token(user=user, now=timezone.now()).plaintext
    client = api_client_for(user)

    async def via_asgi(body: dict) -> tuple[int, bytes]:
        response = await AsyncClient().post(
            URL, body, content_type="application/json", headers={"Authorization": f"Bearer {token}"}
        )
        if response.streaming:
            return response.status_code, b"".join([c async for c in response.streaming_content])
        return response.status_code, response.content

    with FrameWatch(key) as watch:
        for body in (BODY, {**BODY, "stream": True}):
            r = client.post(URL, body, content_type="application/json")
            assert r.status_code == 200
            b"".join(r)  # the whole answer, streamed or not
            assert watch.leaks == [], "WSGI path"
            status, _ = async_to_sync(via_asgi)(body)  # its sync work on this thread
            assert status == 200
            assert watch.leaks == [], "ASGI path"
    assert standin.state.calls("/v1/chat/completions")[-1]["key"] == key  # it was used
    assert watch.frames >= 4, watch.frames
