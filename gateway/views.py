"""POST /api/v1/gateway/chat/completions (SPEC G1–G3).

An async view, so that under ASGI (uvicorn, as `make dev` serves it) a slow upstream stream
holds a coroutine, not a worker thread. Under WSGI (gunicorn's sync workers, and Django's test
client) the same steps run synchronously on the request's own thread, on a synchronous httpx
transport: Django would otherwise run the coroutine in an event loop of its own that is closed
as soon as the view returns, while the streamed answer (and the pooled connection) still
belonged to it ("Event loop is closed", issue 13).

The customer's key is decrypted only for the upstream call, and no upstream error text, header
or key ever reaches the response or the logs (the key is also scrubbed from whatever a
successful upstream answer might echo).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import itertools
import json
import logging
import math
import os
import re
import threading
import time
import weakref
from functools import partial

import httpx
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.debug import sensitive_variables

from accounts.auth import bearer_or_session
from accounts.tokens import bearer_token
from codingplans import ratelimit
from codingplans.errors import DomainError
from gateway import services
from gateway.errors import (
    InvalidRequest,
    ProviderError,
    ProviderKeyRejected,
    ProviderRateLimited,
    ProviderTimeout,
    RateLimited,
)
from upstream.client import ssl_context

logger = logging.getLogger(__name__)

GATEWAY_PATH = "/api/v1/gateway/chat/completions"
MAX_REQUEST_BYTES = 1024 * 1024
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
USAGE_SCAN_BYTES = 64 * 1024
MAX_PENDING_LINE_BYTES = 1024 * 1024
SCRUBBED = "[REDACTED]"
DONE_LINE = b"data: [DONE]"
STREAM_BROKEN_EVENT = (
    b'data: {"error": {"code": "provider_error", "message": "The provider stream ended early."}}'
    b"\n\n"
)


def _error(exc: DomainError, *, upstream: httpx.Response | None = None) -> JsonResponse:
    """The error envelope; a provider rate limit always carries Retry-After (SPEC G3), from
    `upstream`'s header when it has a usable one."""
    response = JsonResponse(
        {"error": {"code": exc.code, "message": exc.message}}, status=exc.status
    )
    if isinstance(exc, ProviderRateLimited):
        response["Retry-After"] = _retry_after(upstream)
    return response


class _Unauthenticated(Exception):
    """No valid token or session: answered with 401 and `WWW-Authenticate`."""


def _admit(request: HttpRequest) -> tuple[int, dict, services.Route]:
    """Authenticate, rate-limit (per token, or per session user, and per user across all of
    their tokens, in the shared fixed-window limiter), parse the body and resolve the route —
    the first failure in that order wins.

    One synchronous step, so the async view makes one thread hop for all of it instead of one
    per step; a bearer caller and their key are read in one query (issue 8: added latency)."""
    header = request.headers.get("Authorization", "")
    if not header:
        user = bearer_or_session(request)  # the session (CSRF-checked)
        if user is None:
            raise _Unauthenticated()
        _rate_limit(f"user:{user.pk}", user_id=user.pk)
        body = _request_body(request)
        return user.pk, body, services.resolve_route(user=user, model=body.get("model"))
    token = bearer_token(header)
    if token is None:
        raise _Unauthenticated()
    body, body_error = None, None
    try:
        body = _request_body(request)
    except DomainError as exc:
        body_error = exc
    model = body.get("model") if body else None
    parts = services.split_model(model)
    caller = services.bearer_caller(
        token, provider_id=parts[0] if parts else None, now=timezone.now()
    )
    if caller is None:
        raise _Unauthenticated()
    _rate_limit(f"token:{caller.token_id}", user_id=caller.user_id)
    if body_error is not None:
        raise body_error
    return caller.user_id, body, caller.route(model)


def _rate_limit(who: str, *, user_id: int) -> None:
    """Fixed one-minute windows in the shared cache: `who`'s own budget (a token, by its id —
    never the header's spelling — or a session user), then the user's cap across all of their
    tokens and their session, so making more tokens buys no more (issue 13). A request the
    token's own limit refuses does not count against the user's cap."""
    if not ratelimit.hit("gateway", who, limit=int(settings.GATEWAY_RATE_LIMIT_PER_MINUTE)):
        raise RateLimited()
    per_user = int(settings.GATEWAY_RATE_LIMIT_PER_USER_PER_MINUTE)
    if not ratelimit.hit("gateway-user", str(user_id), limit=per_user):
        raise RateLimited(
            "Too many requests from your account (all your API tokens together); "
            "slow down and retry in a minute."
        )


class _MeteredResponse:
    """A response that records the request's usage once it has been sent: Django calls
    `close()` after the last byte (under ASGI and WSGI, and in the test client), so metering
    adds nothing to the caller's latency (issue 8). A metering failure is logged, never
    turned into an error for an answer the caller already has."""

    def set_metering(self, record) -> None:
        self._metering = record

    def close(self) -> None:
        record, self._metering = getattr(self, "_metering", None), None
        try:
            if record is not None:
                record()
        except Exception:
            logger.exception("gateway: could not record usage")
        finally:
            super().close()


class MeteredJsonResponse(_MeteredResponse, JsonResponse):
    pass


class MeteredStreamingResponse(_MeteredResponse, StreamingHttpResponse):
    pass


def _secret_forms(api_key: str) -> list[str]:
    """The key as it could appear in upstream text: raw, and JSON-escaped."""
    forms = {api_key, json.dumps(api_key)[1:-1]}
    return sorted((f for f in forms if f), key=len, reverse=True)


@sensitive_variables("forms", "form")
def _scrub_text(text: str, forms: list[str]) -> str:
    for form in forms:
        text = text.replace(form, SCRUBBED)
    return text


@sensitive_variables("forms")
def _scrub_json(value, forms: list[str]):
    """Replace the key anywhere in a parsed JSON value (keys and strings)."""
    if isinstance(value, str):
        return _scrub_text(value, forms)
    if isinstance(value, list):
        return [_scrub_json(item, forms) for item in value]
    if isinstance(value, dict):
        return {_scrub_text(k, forms): _scrub_json(v, forms) for k, v in value.items()}
    return value


def _map_status(response: httpx.Response) -> DomainError:
    if response.status_code in (401, 403):
        return ProviderKeyRejected()
    if response.status_code == 429:
        return ProviderRateLimited()
    return ProviderError(f"The provider returned an error (HTTP {response.status_code}).")


# MiniMax can answer HTTP 200 with an error in `base_resp` (and no choices). Its codes for a
# rejected key and for rate limits; any other non-zero code is a provider error.
MINIMAX_KEY_REJECTED_CODES = frozenset({1004, 2049})
MINIMAX_RATE_LIMIT_CODES = frozenset({1002, 1039})


def _error_in_body(payload: dict) -> DomainError | None:
    """A 200 whose `base_resp` reports an error and that carries no choices."""
    base = payload.get("base_resp")
    code = base.get("status_code") if isinstance(base, dict) else None
    if not isinstance(code, int) or isinstance(code, bool) or code == 0:
        return None
    choices = payload.get("choices")
    if isinstance(choices, list) and choices:
        return None
    if code in MINIMAX_KEY_REJECTED_CODES:
        return ProviderKeyRejected()
    if code in MINIMAX_RATE_LIMIT_CODES:
        return ProviderRateLimited()
    return ProviderError(f"The provider returned an error (code {code}).")


# Retry-After on every 429 provider_rate_limited (SPEC G3): upstream's when it gave a usable one
# (seconds, or an HTTP date), as whole seconds within these bounds; otherwise the default.
DEFAULT_RETRY_AFTER_SECONDS = 10
MAX_RETRY_AFTER_SECONDS = 3600


def _retry_after(response: httpx.Response | None) -> str:
    value = response.headers.get("Retry-After", "").strip() if response is not None else ""
    seconds = None
    if value.isascii() and value.isdigit():
        seconds = int(value[:12])
    elif value:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            when = None
        if when is not None:
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
            seconds = math.ceil((when - dt.datetime.now(dt.UTC)).total_seconds())
    if seconds is None:
        return str(DEFAULT_RETRY_AFTER_SECONDS)
    return str(min(max(seconds, 1), MAX_RETRY_AFTER_SECONDS))


# One connection pool per event loop (uvicorn runs one per process), so upstream connections
# are kept alive and reused: a new one per request paid a TCP connect (and, in production, a
# TLS handshake) on every call. Keyed weakly by the loop, as a pool cannot outlive its loop.
# The transport, not an `httpx.AsyncClient`: the gateway needs none of a client's machinery
# (redirects are never followed, there is no auth flow), which cost ≈0.25 ms of CPU per call
# (issue 8), and a client would keep one cookie jar for every customer's calls, sending
# cookies one customer's upstream answer set along with the next customer's request.
_transports: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncHTTPTransport] = (
    weakref.WeakKeyDictionary()
)


def _transport() -> httpx.AsyncHTTPTransport:
    loop = asyncio.get_running_loop()
    transport = _transports.get(loop)
    if transport is None:
        transport = httpx.AsyncHTTPTransport(**_TRANSPORT_OPTIONS, verify=ssl_context())
        _transports[loop] = transport
    return transport


_TRANSPORT_OPTIONS = {
    "trust_env": False,
    "limits": httpx.Limits(max_connections=200, max_keepalive_connections=50),
}
# Under WSGI: one synchronous transport (a thread-safe connection pool) per process, made on
# first use, so after gunicorn forks its workers; a child forked later starts a pool of its own.
_sync_transport: httpx.HTTPTransport | None = None
_sync_transport_lock = threading.Lock()


def _forget_sync_transport() -> None:
    global _sync_transport
    _sync_transport = None


os.register_at_fork(after_in_child=_forget_sync_transport)


def _transport_sync() -> httpx.HTTPTransport:
    global _sync_transport
    transport = _sync_transport
    if transport is None:
        with _sync_transport_lock:
            if _sync_transport is None:
                _sync_transport = httpx.HTTPTransport(**_TRANSPORT_OPTIONS, verify=ssl_context())
            transport = _sync_transport
    return transport


def _timeout() -> httpx.Timeout:
    seconds = float(getattr(settings, "GATEWAY_TIMEOUT_SECONDS", 60))
    return httpx.Timeout(seconds, connect=5.0)


# JSON nested deeper than this is refused (a request) or treated as invalid (an answer): Python's
# parser accepts ~1000 levels, but encoding such a value again for upstream, or walking it to
# scrub the key, runs out of stack — a 500 (issue 13). Chat bodies, tool schemas included, nest
# far less.
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_A_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))
_BRACKET_STEP = [0] * 256
_BRACKET_STEP[ord("[")] = _BRACKET_STEP[ord("{")] = 1
_BRACKET_STEP[ord("]")] = _BRACKET_STEP[ord("}")] = -1


def _nested_too_deep(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether JSON text nests containers more than `limit` deep, without parsing it: the
    brackets outside strings, counted. Nearly free for ordinary bodies (too few brackets to
    matter); C-speed scans otherwise."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_A_BRACKET)
    if re.search(rb"[\[{]{%d}" % (limit + 1), brackets):  # a plain run of openers
        return True
    return max(itertools.accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0) > limit


def _request_body(request: HttpRequest) -> dict:
    try:
        raw = request.body
    except RequestDataTooBig:
        raise InvalidRequest("The request body is too large.") from None
    if len(raw) > MAX_REQUEST_BYTES:
        raise InvalidRequest("The request body is too large.")
    if _nested_too_deep(raw):
        raise InvalidRequest(f"The request body is nested more than {MAX_JSON_DEPTH} levels deep.")
    try:
        body = json.loads(raw or b"null")
    except (ValueError, RecursionError):
        raise InvalidRequest() from None
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest()
    return body


def _unauthenticated() -> JsonResponse:
    response = JsonResponse(
        {
            "error": {
                "code": "unauthenticated",
                "message": "Send your personal API token as `Authorization: Bearer <token>`.",
            }
        },
        status=401,
    )
    response["WWW-Authenticate"] = "Bearer"
    return response


def _method_not_allowed() -> JsonResponse:
    response = JsonResponse(
        {"error": {"code": "method_not_allowed", "message": "Use POST."}}, status=405
    )
    response["Allow"] = "POST"
    return response


@sensitive_variables("route", "headers")
def _upstream_request(route: services.Route, body: dict) -> httpx.Request:
    upstream_body = {**body, "model": route.upstream_model}
    headers = {"Authorization": f"Bearer {route.api_key}", "Content-Type": "application/json"}
    return httpx.Request(
        "POST",
        settings.MINIMAX_API_BASE_URL.rstrip("/") + "/v1/chat/completions",
        content=json.dumps(upstream_body),
        headers=headers,
        extensions={"timeout": _timeout().as_dict()},
    )


def _unreachable(route: services.Route, exc: Exception) -> JsonResponse:
    if isinstance(exc, httpx.TimeoutException):
        logger.warning("gateway: %s upstream timed out", route.provider_id)
        return _error(ProviderTimeout())
    logger.warning("gateway: %s upstream unreachable (%s)", route.provider_id, type(exc).__name__)
    return _error(ProviderError("The provider could not be reached."))


def _refused(route: services.Route, upstream: httpx.Response) -> JsonResponse:
    """A non-200 upstream answer (its body already closed), as our own error."""
    error = _map_status(upstream)
    logger.warning(
        "gateway: %s upstream answered HTTP %s (%s)",
        route.provider_id,
        upstream.status_code,
        error.code,
    )
    return _error(error, upstream=upstream)


def _is_event_stream(upstream: httpx.Response) -> bool:
    content_type = upstream.headers.get("Content-Type", "").split(";")[0].strip().lower()
    return content_type == "text/event-stream"


def _not_a_stream(route: services.Route, raw: bytes | None) -> JsonResponse:
    """A 200 to a streaming request that is no event stream (the start of its body in `raw`):
    MiniMax's JSON with an error in `base_resp` maps as in a non-streaming answer; anything
    else (an error page, a plain answer) is a provider error. Upstream text is never relayed."""
    try:
        payload = json.loads(raw or b"null")
    except (ValueError, RecursionError):
        payload = None
    error = _error_in_body(payload) if isinstance(payload, dict) else None
    if error is not None:
        logger.warning("gateway: %s upstream answered 200 with %s", route.provider_id, error.code)
        return _error(error)
    logger.warning("gateway: %s upstream answered a stream with no SSE", route.provider_id)
    return _error(ProviderError("The provider sent an invalid response."))


def _streaming_response(content, *, user_id: int, route, relay: _Relay, started: float):
    response = MeteredStreamingResponse(
        content,
        content_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )

    def record_stream() -> None:
        if relay.completed:
            services.record_usage(
                user_id=user_id,
                route=route,
                streamed=True,
                usage=services.usage_from_sse(relay.tail),
                latency_ms=int((relay.ended - started) * 1000),
                now=timezone.now(),
            )

    response.set_metering(record_stream)
    return response


def _answer(raw: bytes, *, user_id: int, route, started: float) -> HttpResponse:
    """A complete non-streaming upstream answer (HTTP 200) → our response."""
    try:
        if _nested_too_deep(raw):
            raise ValueError
        payload = json.loads(raw)
        if not isinstance(payload, dict):
            raise ValueError
    except (ValueError, RecursionError):
        logger.warning("gateway: %s upstream sent an invalid answer", route.provider_id)
        return _error(ProviderError("The provider sent an invalid response."))
    error = _error_in_body(payload)
    if error is not None:
        logger.warning("gateway: %s upstream answered 200 with %s", route.provider_id, error.code)
        return _error(error)
    payload = _scrub_json(payload, _secret_forms(route.api_key))
    latency_ms = int((time.monotonic() - started) * 1000)
    usage = payload.get("usage")
    payload["model"] = f"{route.provider_id}/{payload.get('model') or route.upstream_model}"
    response = MeteredJsonResponse(payload)
    response.set_metering(
        partial(
            services.record_usage,
            user_id=user_id,
            route=route,
            streamed=False,
            usage=usage,
            latency_ms=latency_ms,
            now=timezone.now(),
        )
    )
    return response


async def _read_async(upstream: httpx.Response, *, limit: int) -> bytes | None:
    """The whole body, or None once it exceeds `limit` bytes."""
    raw = b""
    async for chunk in upstream.aiter_bytes():
        raw += chunk
        if len(raw) > limit:
            return None
    return raw


def _read_sync(upstream: httpx.Response, *, limit: int) -> bytes | None:
    raw = b""
    for chunk in upstream.iter_bytes():
        raw += chunk
        if len(raw) > limit:
            return None
    return raw


@csrf_exempt  # bearer tokens carry no ambient authority; session callers are CSRF-checked
@sensitive_variables("route")
async def chat_completions(request: HttpRequest) -> HttpResponse:
    if not isinstance(request, ASGIRequest):
        # Under WSGI Django runs this coroutine in an event loop of its own, closed when the
        # view returns: take the synchronous path, on the request's own thread.
        return await sync_to_async(chat_completions_sync)(request)
    if request.method != "POST":
        return _method_not_allowed()
    try:
        user_id, body, route = await sync_to_async(_admit)(request)
    except DomainError as exc:
        return _error(exc)
    except _Unauthenticated:
        return _unauthenticated()

    stream = body.get("stream") is True
    started = time.monotonic()
    try:
        upstream = await _transport().handle_async_request(_upstream_request(route, body))
    except httpx.HTTPError as exc:
        return _unreachable(route, exc)

    if upstream.status_code != 200:
        await upstream.aclose()
        return _refused(route, upstream)

    if stream:
        if not _is_event_stream(upstream):
            try:
                raw = await _read_async(upstream, limit=USAGE_SCAN_BYTES)
            except httpx.HTTPError:
                raw = None
            finally:
                await upstream.aclose()
            return _not_a_stream(route, raw)
        relay = _Relay(route)
        return _streaming_response(
            _relay(upstream, relay), user_id=user_id, route=route, relay=relay, started=started
        )

    try:
        raw = await _read_async(upstream, limit=MAX_RESPONSE_BYTES)
        if raw is None:
            return _error(ProviderError("The provider's response was too large."))
    except httpx.TimeoutException:
        logger.warning("gateway: %s upstream timed out mid-answer", route.provider_id)
        return _error(ProviderTimeout())
    except httpx.HTTPError:
        logger.warning("gateway: %s upstream sent an invalid answer", route.provider_id)
        return _error(ProviderError("The provider sent an invalid response."))
    finally:
        await upstream.aclose()
    return _answer(raw, user_id=user_id, route=route, started=started)


@sensitive_variables("route")
def chat_completions_sync(request: HttpRequest) -> HttpResponse:
    """`chat_completions` under WSGI: the same steps, on a synchronous httpx transport, with a
    synchronous generator relaying the stream (which gunicorn's workers send as it arrives)."""
    if request.method != "POST":
        return _method_not_allowed()
    try:
        user_id, body, route = _admit(request)
    except DomainError as exc:
        return _error(exc)
    except _Unauthenticated:
        return _unauthenticated()

    stream = body.get("stream") is True
    started = time.monotonic()
    try:
        upstream = _transport_sync().handle_request(_upstream_request(route, body))
    except httpx.HTTPError as exc:
        return _unreachable(route, exc)

    if upstream.status_code != 200:
        upstream.close()
        return _refused(route, upstream)

    if stream:
        if not _is_event_stream(upstream):
            try:
                raw = _read_sync(upstream, limit=USAGE_SCAN_BYTES)
            except httpx.HTTPError:
                raw = None
            finally:
                upstream.close()
            return _not_a_stream(route, raw)
        relay = _Relay(route)
        return _streaming_response(
            _relay_sync(upstream, relay), user_id=user_id, route=route, relay=relay, started=started
        )

    try:
        raw = _read_sync(upstream, limit=MAX_RESPONSE_BYTES)
        if raw is None:
            return _error(ProviderError("The provider's response was too large."))
    except httpx.TimeoutException:
        logger.warning("gateway: %s upstream timed out mid-answer", route.provider_id)
        return _error(ProviderTimeout())
    except httpx.HTTPError:
        logger.warning("gateway: %s upstream sent an invalid answer", route.provider_id)
        return _error(ProviderError("The provider sent an invalid response."))
    finally:
        upstream.close()
    return _answer(raw, user_id=user_id, route=route, started=started)


def _stream_done(tail: bytes) -> bool:
    """Whether the stream ended with its terminator (`data: [DONE]`). An upstream that simply
    closes the connection mid-answer ends its body "cleanly" at the HTTP level when it sent no
    length or chunked framing; without the terminator the answer is incomplete."""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return bool(lines) and lines[-1] == DONE_LINE


def _event_separator(tail: bytes) -> bytes:
    """What to send so that our own event starts after whatever was relayed so far."""
    if not tail or tail.endswith((b"\n\n", b"\r\n\r\n", b"\r\r")):
        return b""
    return b"\n" if tail.endswith((b"\n", b"\r")) else b"\n\n"


# JSON escapes that could spell a character of a key in a string: `\uXXXX` always; the short
# escapes only when the key has that character.
_SHORT_ESCAPES = {
    '"': b'\\"',
    "\\": b"\\\\",
    "/": b"\\/",
    "\b": b"\\b",
    "\f": b"\\f",
    "\n": b"\\n",
    "\r": b"\\r",
    "\t": b"\\t",
}
_EVENT_END = re.compile(rb"(\r?\n\r?\n)")


def _event_cut(data: bytes) -> int:
    """The index just past the last blank line (the end of the last complete event), or 0."""
    return max(data.rfind(b"\n\n") + 2, data.rfind(b"\n\r\n") + 3, 0) if b"\n" in data else 0


class _Relay:
    """The state of one relayed stream, shared by the ASGI and WSGI relays.

    Upstream bytes are passed on a whole event at a time (an SSE client acts on nothing before
    an event's blank line, so this delays nothing), so the key can be scrubbed should upstream
    ever echo it: as it is or JSON-escaped, by a plain replace; and when an event carries JSON
    escapes that could spell it (`\\u0073k-…`), in the event's data as a client decodes it —
    the data lines joined, parsed, the key replaced in its strings and, if anything changed,
    the event re-encoded (issue 13). A stream counts as completed (and its usage is recorded)
    only when it ended with `data: [DONE]`; one that broke off ends with a sanitized SSE error
    event instead."""

    __slots__ = (
        "_escapes",
        "_forms",
        "_pending",
        "_route",
        "_text_forms",
        "completed",
        "ended",
        "tail",
    )

    def __init__(self, route: services.Route) -> None:
        self._route = route
        self._text_forms = _secret_forms(route.api_key)
        self._forms = [form.encode() for form in self._text_forms]
        self._escapes = (b"\\u", *{_SHORT_ESCAPES[c] for c in route.api_key if c in _SHORT_ESCAPES})
        self._pending = b""
        self.tail = b""
        self.completed = False
        self.ended = 0.0

    def __repr__(self) -> str:  # never the key forms
        return f"<_Relay {self._route.provider_id}>"

    def _scrub(self, data: bytes) -> bytes:
        for form in self._forms:
            data = data.replace(form, SCRUBBED.encode())
        if any(escape in data for escape in self._escapes):
            parts = _EVENT_END.split(data)  # event, separator, event, …, the rest
            parts[::2] = [self._scrub_event(event) for event in parts[::2]]
            data = b"".join(parts)
        return data

    def _scrub_event(self, event: bytes) -> bytes:
        """One event (without its blank line) whose data a client would decode to the key: the
        same event with the key replaced in the decoded data, re-encoded on one `data:` line."""
        if not any(escape in event for escape in self._escapes):
            return event
        lines = event.split(b"\n")
        values = [
            line.rstrip(b"\r")[5:].removeprefix(b" ") for line in lines if line.startswith(b"data:")
        ]
        if not values:
            return event
        data = b"\n".join(values)
        if _nested_too_deep(data):  # nothing a chat stream sends, and unsafe to walk: withheld
            logger.warning("gateway: %s upstream event nested too deep", self._route.provider_id)
            return b": withheld"
        try:
            decoded = json.loads(data)
        except (ValueError, RecursionError):
            return event  # not JSON: a client has no escapes to decode either
        scrubbed = _scrub_json(decoded, self._text_forms)
        if scrubbed == decoded:
            return event
        kept = [line for line in lines if line and not line.startswith(b"data:")]
        return b"\n".join([*kept, b"data: " + json.dumps(scrubbed).encode()])

    def _out(self, data: bytes) -> bytes:
        self.tail = (self.tail + data)[-USAGE_SCAN_BYTES:]
        return data

    def feed(self, chunk: bytes) -> bytes:
        """What to send on now that `chunk` arrived (b"" while an event is incomplete)."""
        pending = self._pending + chunk
        cut = _event_cut(pending)
        if not cut:
            if len(pending) < MAX_PENDING_LINE_BYTES:
                self._pending = pending
                return b""
            cut = pending.rfind(b"\n") + 1 or len(pending)  # an over-long event: whole lines
        self._pending = pending[cut:]
        return self._out(self._scrub(pending[:cut]))

    def end(self) -> bytes:
        """Upstream's body ended: the terminator, or our error event if it broke off."""
        rest, self._pending = self._pending, b""
        lines = [line.strip() for line in rest.splitlines() if line.strip()]
        out = b""
        if lines and lines[-1] == DONE_LINE:  # the last event without its blank line
            out = self._out(self._scrub(rest.rstrip(b"\r\n") + b"\n\n"))
        elif b"\n" in rest:  # the complete lines of an unfinished event (a partial one is dropped)
            out = self._out(self._scrub(rest[: rest.rfind(b"\n") + 1]))
        self.completed = _stream_done(self.tail)
        if not self.completed:
            logger.warning("gateway: %s upstream stream ended early", self._route.provider_id)
            out += _event_separator(self.tail) + STREAM_BROKEN_EVENT
        return out

    def broke(self, exc: Exception) -> bytes:
        """Upstream broke mid-stream: end our stream with an SSE error event, sanitized."""
        logger.warning(
            "gateway: %s upstream stream broke (%s)", self._route.provider_id, type(exc).__name__
        )
        return _event_separator(self.tail) + STREAM_BROKEN_EVENT

    def finished(self) -> None:
        self.ended = time.monotonic()


async def _relay(upstream: httpx.Response, relay: _Relay):
    """Pass server-sent events through as they arrive (G2). If the client goes away, the
    generator is closed and the upstream request with it."""
    try:
        async for chunk in upstream.aiter_raw():
            out = relay.feed(chunk)
            if out:
                yield out
        out = relay.end()
        if out:
            yield out
    except httpx.HTTPError as exc:
        yield relay.broke(exc)
    finally:
        await upstream.aclose()
    relay.finished()  # recorded by the response once the stream is closed (_MeteredResponse)


def _relay_sync(upstream: httpx.Response, relay: _Relay):
    """`_relay` under WSGI."""
    try:
        for chunk in upstream.iter_raw():
            out = relay.feed(chunk)
            if out:
                yield out
        out = relay.end()
        if out:
            yield out
    except httpx.HTTPError as exc:
        yield relay.broke(exc)
    finally:
        upstream.close()
    relay.finished()
