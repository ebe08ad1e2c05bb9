"""Canary (SPEC S1, issue 6): the installed key and a customer's own key never appear in gateway
responses, errors or logs — including when upstream echoes the key back.

Two shapes of canary: one the logging filter would redact anyway (`sk-…`), and one it would not
recognise as a key at all, so that the gateway's own care (not the second line of defence) is
what keeps it out.
"""

from __future__ import annotations

import json
import logging
import socket
import time

import httpx
import pytest
from django.utils import timezone
from django.views.debug import ExceptionReporter

from accounts.tokens import create_api_token
from byok.services import add_key
from gateway import proxy, services
from gateway.models import GatewayRequest
from inventory.upload import upload_credentials
from subscriptions.purchase import purchase_plan
from tests.conftest import api_client_for
from tests.gateway.conftest import BODY, PLUS, URL

CANARY_SHAPES = {
    "plain": ("canaryInstalled7Q3x", "canaryOwnKey9Z2w"),
    "sk": ("sk-canary-installed-7Q3x", "sk-canary-own-9Z2w"),
}
# Everything at DEBUG except httpx/httpcore, which the project's LOGGING pins at WARNING (their
# DEBUG traces print upstream response headers, which an upstream could use to echo a key).
LOGGERS = ("", "gateway", "django", "django.request", "django.server", "uvicorn", "upstream")


class Collect(logging.Handler):
    """Everything logged, fully formatted (message, traceback, stack)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record) + repr(getattr(record, "args", "")))


@pytest.fixture
def logs(caplog):
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name or None)
    for name in ("httpx", "httpcore"):
        assert logging.getLogger(name).getEffectiveLevel() >= logging.WARNING
    handler = Collect()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler, caplog
    finally:
        root.removeHandler(handler)


def install(user, key: str) -> int:
    """Upload `key` as a Plus credential and buy it: the key becomes the installed entry."""
    report = upload_credentials(
        plan_id=PLUS, text=f"{key}::up-{key[-4:]}", actor="system:test", now=timezone.now()
    )
    assert report.ok, report.errors
    out = purchase_plan(
        user=user, plan_id=PLUS, idempotency_key=f"canary-{key}", now=timezone.now()
    )
    assert out.status == 201
    return out.subscription_id


def echoes(key: str) -> list[dict]:
    """Upstream answers that quote the key back, in every place they could."""
    error = {"error": {"message": f"invalid key {key}", "key": key, key: "echo"}}
    headers = {"X-Echo-Key": key, "Retry-After": "5"}
    return [
        {"status": 401, "body": error, "headers": headers},
        {"status": 403, "body": error, "headers": headers},
        {"status": 429, "body": error, "headers": headers},
        {"status": 500, "body": error, "headers": headers},
        {"status": 400, "body": error, "headers": headers},
        {"status": 200, "raw": f"<html>bad key {key}</html>", "headers": headers},
        {
            "status": 200,
            "body": {
                "model": key,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": f"key: {key}!"}}
                ],
                key: [key, {"nested": f"Bearer {key}"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 2},
            },
            "headers": headers,
        },
    ]


def transcript(response) -> str:
    """Everything a client receives: status line, headers, body."""
    head = "\n".join(f"{name}: {value}" for name, value in response.items())
    return f"{response.status_code}\n{head}\n\n{response.content.decode(errors='replace')}"


def assert_absent(keys, *texts: str) -> None:
    for key in keys:
        for text in texts:
            at = text.find(key)
            assert at < 0, f"canary {key!r} leaked: ...{text[max(0, at - 1500) : at + 200]}"


@pytest.mark.django_db
@pytest.mark.parametrize("shape", sorted(CANARY_SHAPES))
def test_keys_never_leak_through_responses_errors_or_logs(
    make_user, standin, settings, logs, shape
):
    installed_key, own_key = CANARY_SHAPES[shape]
    installed_user = make_user(credits_usd=50)
    install(installed_user, installed_key)
    own_user = make_user()
    add_key(user=own_user, provider_id="minimax", api_key=own_key, now=timezone.now())
    settings.GATEWAY_TIMEOUT_SECONDS = 1
    seen: list[str] = []
    for user, key in ((installed_user, installed_key), (own_user, own_key)):
        client = api_client_for(user)
        standin.state.reset()
        r = client.post(URL, BODY, content_type="application/json")
        assert r.status_code == 200
        assert standin.state.calls("/v1/chat/completions")[-1]["key"] == key  # it was used
        seen.append(transcript(r))
        for canned in echoes(key):
            standin.state.configure({"response": canned})
            r = client.post(URL, BODY, content_type="application/json")
            seen.append(transcript(r))
            if canned["status"] == 200 and "body" in canned:
                # A successful answer that quotes the key reaches the client scrubbed.
                assert r.status_code == 200
                payload = r.json()
                assert payload["choices"][0]["message"]["content"] == "key: [REDACTED]!"
                assert payload["[REDACTED]"] == ["[REDACTED]", {"nested": "Bearer [REDACTED]"}]
            else:
                assert r.status_code in (429, 502), r.content
        standin.state.reset()
        for failure in ("timeout", "malformed", "401"):
            standin.state.configure({"failure": failure, "timeout_sleep_s": 1.5})
            seen.append(transcript(client.post(URL, BODY, content_type="application/json")))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        settings.MINIMAX_API_BASE_URL = f"http://127.0.0.1:{sock.getsockname()[1]}"
    for user in (installed_user, own_user):
        r = api_client_for(user).post(URL, BODY, content_type="application/json")
        assert r.status_code == 502
        seen.append(transcript(r))
    handler, caplog = logs
    assert caplog.records, "nothing was logged: the capture is not working"
    assert any("gateway" in line for line in handler.lines)
    assert_absent((installed_key, own_key), *seen, caplog.text, "\n".join(handler.lines))


def _broken_metering(**kwargs):
    raise RuntimeError("metering is down")


def _broken_check(route, payload):
    raise RuntimeError("answer check is down")


@pytest.mark.django_db
def test_metering_failure_keeps_the_answer_and_logs_no_key(customer, logs, monkeypatch):
    # SPEC G3, S1; issue 8: usage is recorded once the answer has been sent, so a metering
    # failure is logged (without the key) and the caller still gets the answer.
    key = "".join(("canary", "Metering", "7Qx2"))
    install(customer, key)
    monkeypatch.setattr(services, "record_usage", _broken_metering)
    r = api_client_for(customer).post(URL, BODY, content_type="application/json")
    assert r.status_code == 200 and r.json()["choices"]
    handler, caplog = logs
    assert "could not record usage" in caplog.text
    assert_absent((key,), transcript(r), caplog.text, "\n".join(handler.lines))


@pytest.mark.django_db
def test_error_reports_do_not_show_the_key(customer, settings, monkeypatch, mailoutbox, logs):
    # An unexpected failure after the upstream call. Django's error report (the HTML an error
    # e-mail to ADMINS can carry) lists every frame's local variables; with
    # DEBUG off, none of them shows the key: no local of the view holds it (the Authorization
    # header is built in a helper, whose `headers` is a sensitive variable; issue 13 item 16),
    # and a Route's repr leaves the key out.
    # Built at run time: error reports quote source lines, and a literal would be found there.
    key = "".join(("canary", "ErrorReport", "5K8v"))
    install(customer, key)
    settings.DEBUG = False
    settings.ADMINS = [("Ops", "ops@example.com")]

    monkeypatch.setattr(proxy, "_error_in_body", _broken_check)
    client = api_client_for(customer)
    with pytest.raises(RuntimeError, match="answer check is down") as excinfo:
        client.post(URL, BODY, content_type="application/json")
    below_this_test = excinfo.value.__traceback__.tb_next  # (this frame holds the canary)
    report = ExceptionReporter(
        None, excinfo.type, excinfo.value, below_this_test, is_email=True
    ).get_traceback_html()
    assert "chat_completions" in report and "started" in report  # the view's locals
    client.raise_request_exception = False
    r = client.post(URL, BODY, content_type="application/json")
    assert r.status_code == 500
    assert mailoutbox, "no error e-mail"
    handler, caplog = logs
    assert_absent(
        (key,),
        report,
        transcript(r),
        *(mail.body for mail in mailoutbox),
        caplog.text,
        "\n".join(handler.lines),
    )


def test_route_repr_hides_the_key():
    route = services.Route(
        provider_id="minimax", upstream_model="MiniMax-M2", api_key="canaryRepr", subscription_id=1
    )
    assert "canaryRepr" not in repr(route) and "canaryRepr" not in str(route)


@pytest.mark.django_db(transaction=True)
def test_streamed_answers_are_scrubbed_too(asgi_server, make_user, standin, logs):
    installed_key = "canaryStreamInst4M1q"
    user = make_user(credits_usd=50)
    install(user, installed_key)
    token = create_api_token(user=user, now=timezone.now()).plaintext
    headers = {"Authorization": f"Bearer {token}"}
    body = {**BODY, "stream": True}
    event = {"choices": [{"index": 0, "delta": {"content": f"the key is {installed_key}"}}]}
    raw = (
        f"data: {json.dumps(event)}\n\n"
        f'data: {{"usage": {{"prompt_tokens": 3, "completion_tokens": 4}}, '
        f'"note": "{installed_key}"}}\n\n'
        "data: [DONE]\n\n"
    )
    seen = []
    with httpx.Client(base_url=asgi_server.url, timeout=10, headers=headers) as client:
        standin.state.configure(
            {
                "response": {
                    "status": 200,
                    "raw": raw,
                    "headers": {"Content-Type": "text/event-stream"},
                }
            }
        )
        r = client.post(URL, json=body)
        assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
        assert "the key is [REDACTED]" in r.text
        seen.append(r.text + repr(r.headers))
        for canned in echoes(installed_key)[:5]:
            standin.state.configure({"response": canned})
            r = client.post(URL, json=body)
            assert r.status_code in (429, 502)
            seen.append(r.text + repr(r.headers))
    handler, caplog = logs
    assert_absent((installed_key,), *seen, caplog.text, "\n".join(handler.lines))


def sse_events(text: str) -> list[str]:
    """The data of each event as an SSE client sees it: `data:` values joined by newlines."""
    events, data = [], []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line:
            if data:
                events.append("\n".join(data))
            data = []
        elif line.startswith("data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        events.append("\n".join(data))
    return events


def strings_in(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for item in value for s in strings_in(item)]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *strings_in(v))]
    return []


def decoded_stream(text: str) -> tuple[list, str]:
    """(the decoded JSON events, the content they carry)."""
    events = [json.loads(data) for data in sse_events(text) if data != "[DONE]"]
    content = "".join(
        choice.get("delta", {}).get("content") or ""
        for event in events
        for choice in event.get("choices", [])
    )
    return events, content


@pytest.mark.django_db(transaction=True)
def test_streamed_key_in_json_escapes_is_scrubbed(asgi_server, make_user, standin, logs):
    # SPEC S1 (issue 13 item 19): upstream echoing the key as `\uXXXX` escapes in a streamed
    # event — a single-line one and one whose data spans two `data:` lines — never lets the
    # client decode the key, under ASGI (uvicorn) and WSGI (the test client's path).
    installed_key = "".join(("sk-echo-", "canaryEscaped", "6Rt1"))
    user = make_user(credits_usd=50)
    install(user, installed_key)
    token = create_api_token(user=user, now=timezone.now()).plaintext
    body = {**BODY, "stream": True}
    with httpx.Client(base_url=asgi_server.url, timeout=10) as client:
        r = client.post(URL, json=body, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
        asgi_text = r.text
    r = api_client_for(user).post(URL, body, content_type="application/json")
    assert r.status_code == 200
    wsgi_text = b"".join(r).decode()
    assert standin.state.calls("/v1/chat/completions")[-1]["key"] == installed_key
    for text in (asgi_text, wsgi_text):
        events, content = decoded_stream(text)
        assert content.startswith("your key is [REDACTED] chunk1 "), content
        assert any(event.get("note") == "[REDACTED]" for event in events), events
        assert sse_events(text)[-1] == "[DONE]"
        decoded = [s for event in events for s in strings_in(event)]
        assert_absent((installed_key,), text, json.dumps(events), *decoded)
    # Still metered, once each (the ASGI call's row is written a few milliseconds after it).
    deadline = time.monotonic() + 2
    while GatewayRequest.objects.filter(streamed=True).count() < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert GatewayRequest.objects.filter(streamed=True).count() == 2
    handler, caplog = logs
    assert_absent((installed_key,), caplog.text, "\n".join(handler.lines))


@pytest.mark.parametrize(
    ("raw", "spells"),
    [
        (b'{"content": "hello"}', False),
        (b'{"content": "sk-abc/def"}', True),  # as it is
        (b'{"content": "sk-abc\\/def"}', True),  # JSON-escaped
        (b'{"content": "\\u0073k-abc/def"}', True),  # a \\uXXXX escape could spell it
        (b'{"content": "line\\nbreak"}', False),  # an escape the key cannot contain
        (b'{"sk-abc/def": 1}', True),  # in an object's key
    ],
)
def test_an_answer_is_walked_for_the_key_whenever_its_text_could_spell_it(raw, spells):
    # Issue 20: a non-streamed answer skips the scrubbing walk only when no string in it can
    # decode to the key (SPEC S1).
    from gateway.relay import may_spell_key

    assert may_spell_key(raw, "sk-abc/def") is spells
