"""POST /api/v1/gateway/chat/completions (SPEC G1–G3).

An async view, so that under ASGI (uvicorn, as `make dev` serves it) a slow upstream stream
holds a coroutine, not a worker thread. The customer's key is decrypted only for the upstream
call, and no upstream error text, header or key ever reaches the response or the logs (the
key is also scrubbed from whatever a successful upstream answer might echo).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from functools import partial

import httpx
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.debug import sensitive_variables

from codingplans import ratelimit
from codingplans.api import bearer_or_session
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


def _error(exc: DomainError, *, retry_after: str | None = None) -> JsonResponse:
    response = JsonResponse(
        {"error": {"code": exc.code, "message": exc.message}}, status=exc.status
    )
    if retry_after:
        response["Retry-After"] = retry_after
    return response


class _Unauthenticated(Exception):
    """No valid token or session: answered with 401 and `WWW-Authenticate`."""


def _admit(request: HttpRequest) -> tuple[int, dict, services.Route]:
    """Authenticate, rate-limit (per token, or per session user, in the shared fixed-window
    limiter), parse the body and resolve the route — the first failure in that order wins.

    One synchronous step, so the async view makes one thread hop for all of it instead of one
    per step; a bearer caller and their key are read in one query (issue 8: added latency)."""
    header = request.headers.get("Authorization", "")
    if not header:
        user = bearer_or_session(request)  # the session (CSRF-checked)
        if user is None:
            raise _Unauthenticated()
        _rate_limit(f"user:{user.pk}")
        body = _request_body(request)
        return user.pk, body, services.resolve_route(user=user, model=body.get("model"))
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _Unauthenticated()
    body, body_error = None, None
    try:
        body = _request_body(request)
    except DomainError as exc:
        body_error = exc
    model = body.get("model") if body else None
    parts = services.split_model(model)
    caller = services.bearer_caller(
        token.strip(), provider_id=parts[0] if parts else None, now=timezone.now()
    )
    if caller is None:
        raise _Unauthenticated()
    _rate_limit(header)
    if body_error is not None:
        raise body_error
    return caller.user_id, body, caller.route(model)


def _rate_limit(who: str) -> None:
    if not ratelimit.hit("gateway", who, limit=int(settings.GATEWAY_RATE_LIMIT_PER_MINUTE)):
        raise RateLimited()


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


def _retry_after(response: httpx.Response) -> str | None:
    value = response.headers.get("Retry-After", "").strip()
    return value if value.isdigit() and len(value) <= 6 else None


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
        transport = httpx.AsyncHTTPTransport(
            verify=ssl_context(),
            trust_env=False,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        )
        _transports[loop] = transport
    return transport


def _timeout() -> httpx.Timeout:
    seconds = float(getattr(settings, "GATEWAY_TIMEOUT_SECONDS", 60))
    return httpx.Timeout(seconds, connect=5.0)


def _request_body(request: HttpRequest) -> dict:
    try:
        raw = request.body
    except RequestDataTooBig:
        raise InvalidRequest("The request body is too large.") from None
    if len(raw) > MAX_REQUEST_BYTES:
        raise InvalidRequest("The request body is too large.")
    try:
        body = json.loads(raw or b"null")
    except (ValueError, RecursionError):
        raise InvalidRequest() from None
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest()
    return body


@csrf_exempt  # bearer tokens carry no ambient authority; session callers are CSRF-checked
@sensitive_variables("route", "headers")
async def chat_completions(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        response = JsonResponse(
            {"error": {"code": "method_not_allowed", "message": "Use POST."}}, status=405
        )
        response["Allow"] = "POST"
        return response
    try:
        user_id, body, route = await sync_to_async(_admit)(request)
    except DomainError as exc:
        return _error(exc)
    except _Unauthenticated:
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

    upstream_body = {**body, "model": route.upstream_model}
    stream = body.get("stream") is True
    headers = {"Authorization": f"Bearer {route.api_key}", "Content-Type": "application/json"}
    started = time.monotonic()
    try:
        upstream = await _transport().handle_async_request(
            httpx.Request(
                "POST",
                settings.MINIMAX_API_BASE_URL.rstrip("/") + "/v1/chat/completions",
                content=json.dumps(upstream_body),
                headers=headers,
                extensions={"timeout": _timeout().as_dict()},
            )
        )
    except httpx.TimeoutException:
        logger.warning("gateway: %s upstream timed out", route.provider_id)
        return _error(ProviderTimeout())
    except httpx.HTTPError as exc:
        logger.warning(
            "gateway: %s upstream unreachable (%s)", route.provider_id, type(exc).__name__
        )
        return _error(ProviderError("The provider could not be reached."))

    if upstream.status_code != 200:
        error = _map_status(upstream)
        retry_after = _retry_after(upstream)
        await upstream.aclose()
        logger.warning(
            "gateway: %s upstream answered HTTP %s (%s)",
            route.provider_id,
            upstream.status_code,
            error.code,
        )
        return _error(error, retry_after=retry_after if upstream.status_code == 429 else None)

    if stream:
        content_type = upstream.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "text/event-stream":
            # Not a stream (an error page, a plain JSON answer): never relay upstream text.
            await upstream.aclose()
            logger.warning("gateway: %s upstream answered a stream with no SSE", route.provider_id)
            return _error(ProviderError("The provider sent an invalid response."))
        outcome: dict = {}
        response = MeteredStreamingResponse(
            _relay(upstream, route=route, outcome=outcome),
            content_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

        def record_stream() -> None:
            if outcome.get("completed"):
                services.record_usage(
                    user_id=user_id,
                    route=route,
                    streamed=True,
                    usage=outcome.get("usage"),
                    latency_ms=int((outcome["ended"] - started) * 1000),
                    now=timezone.now(),
                )

        response.set_metering(record_stream)
        return response

    try:
        raw = b""
        async for chunk in upstream.aiter_bytes():
            raw += chunk
            if len(raw) > MAX_RESPONSE_BYTES:
                return _error(ProviderError("The provider's response was too large."))
        payload = json.loads(raw)
        if not isinstance(payload, dict):
            raise ValueError
    except httpx.TimeoutException:
        logger.warning("gateway: %s upstream timed out mid-answer", route.provider_id)
        return _error(ProviderTimeout())
    except (httpx.HTTPError, ValueError):
        logger.warning("gateway: %s upstream sent an invalid answer", route.provider_id)
        return _error(ProviderError("The provider sent an invalid response."))
    finally:
        await upstream.aclose()
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


async def _relay(upstream: httpx.Response, *, route, outcome: dict):
    """Pass server-sent events through as they arrive (G2), whole lines at a time so the key
    can be scrubbed should upstream ever echo it. If the client goes away, the generator is
    closed and the upstream request with it. Usage is recorded only for a stream that ended
    with `data: [DONE]`; one that broke off ends with a sanitized SSE error event instead."""
    forms = [form.encode() for form in _secret_forms(route.api_key)]

    def scrub(data: bytes) -> bytes:
        for form in forms:
            data = data.replace(form, SCRUBBED.encode())
        return data

    tail = b""
    pending = b""
    completed = False
    try:
        async for chunk in upstream.aiter_raw():
            pending += chunk
            cut = pending.rfind(b"\n") + 1
            if not cut:
                if len(pending) < MAX_PENDING_LINE_BYTES:
                    continue
                cut = len(pending)
            out, pending = scrub(pending[:cut]), pending[cut:]
            tail = (tail + out)[-USAGE_SCAN_BYTES:]
            yield out
        if pending.strip() == DONE_LINE:  # the terminator without its final newline
            out, pending = pending + b"\n\n", b""
            tail = (tail + out)[-USAGE_SCAN_BYTES:]
            yield out
        completed = _stream_done(tail)
        if not completed:  # a partial last line (in `pending`) is dropped
            logger.warning("gateway: %s upstream stream ended early", route.provider_id)
            yield _event_separator(tail) + STREAM_BROKEN_EVENT
    except httpx.HTTPError as exc:
        # Upstream broke mid-stream: end our stream with an SSE error event, sanitized.
        logger.warning(
            "gateway: %s upstream stream broke (%s)", route.provider_id, type(exc).__name__
        )
        yield _event_separator(tail) + STREAM_BROKEN_EVENT
    finally:
        await upstream.aclose()
    if completed:  # recorded by the response once the stream is closed (_MeteredResponse)
        outcome.update(completed=True, usage=services.usage_from_sse(tail), ended=time.monotonic())
