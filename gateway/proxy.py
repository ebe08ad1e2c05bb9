"""The gateway's proxy (SPEC G1–G3, V4): an admitted request (`gateway/views.py`) sent on to the
route's provider and its answer relayed back — the upstream transports (one per event loop under
ASGI, one per process under WSGI), the upstream request (its URL and body shaped by the provider
module), the provider's answer read by its module (`upstream/providers/`) and mapped to our
errors, the stream relay and key scrubbing (`gateway/relay.py`), and the usage metering after
the last byte.

The customer's key is used only for the upstream call, and no upstream error text, header or
key ever reaches the response or the logs (the key is also scrubbed from whatever a successful
upstream answer might echo).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
import weakref
from functools import lru_cache

import httpcore
import httpx
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from byok.signals import announce_installed_key_rejected
from gateway import services
from gateway.errors import (
    GatewayError,
    ProviderError,
    ProviderKeyRejected,
    ProviderRateLimited,
    ProviderTimeout,
    error_response,
)
from gateway.nesting import nested_too_deep
from gateway.network import AsyncioBackend
from gateway.relay import (
    USAGE_SCAN_BYTES,
    Relay,
    may_spell_key,
    relay_events,
    relay_events_sync,
    scrub_json,
    secret_forms,
)
from upstream.providers.base import DEFAULT_RETRY_AFTER_SECONDS, Kind, Reading
from upstream.providers.http import ssl_context

logger = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 8 * 1024 * 1024


class _MeteredResponse:
    """A response that records the request's usage once it has been sent: Django calls
    `close()` after the last byte (under ASGI and WSGI, and in the test client), so metering
    adds nothing to the caller's latency (issue 8); `gateway.asgi` calls `aclose()` instead,
    which queues the same row on the event loop, written with others (issue 20). A metering
    failure is logged, never turned into an error for an answer the caller already has."""

    def set_metering(self, usage) -> None:
        """`usage()`, called once the answer is out, gives `services.record_usage`'s keywords,
        or None when there is nothing to record."""
        self._metering = usage

    def _usage(self) -> dict | None:
        usage, self._metering = getattr(self, "_metering", None), None
        return usage() if usage is not None else None

    def close(self) -> None:
        try:
            usage = self._usage()
            if usage is not None:
                services.record_usage(**usage)
        except Exception:
            logger.exception("gateway: could not record usage")
        finally:
            super().close()

    async def aclose(self) -> None:
        """`close()` for a call admitted on the event loop (`gateway.views.LoopRequest`): the
        usage row queued for codingplans.asyncsql (`services.queue_usage`), then Django's close (its
        `request_finished` receivers find no database connection of this call's: it used
        none, and its thread steps handed theirs back as they ended)."""
        try:
            usage = self._usage()
            if usage is not None:
                services.queue_usage(**usage)  # written with others, within milliseconds
        except Exception:
            logger.exception("gateway: could not record usage")
        finally:
            super().close()


class MeteredJsonResponse(_MeteredResponse, JsonResponse):
    pass


class MeteredStreamingResponse(_MeteredResponse, StreamingHttpResponse):
    pass


def _provider_error(reading: Reading) -> GatewayError:
    """The provider's answer, as its module reads it, as our own error (SPEC G3)."""
    if reading.kind is Kind.KEY_REJECTED:
        return ProviderKeyRejected()
    if reading.kind is Kind.RATE_LIMITED:
        return ProviderRateLimited(retry_after=reading.retry_after or DEFAULT_RETRY_AFTER_SECONDS)
    if reading.http_status is not None:
        return ProviderError(f"The provider returned an error (HTTP {reading.http_status}).")
    if reading.code is not None:
        return ProviderError(f"The provider returned an error (code {reading.code}).")
    if reading.kind is Kind.PROVIDER_ERROR:
        return ProviderError()
    return ProviderError("The provider sent an invalid response.")


def _provider_failure(error: GatewayError) -> JsonResponse:
    """The error response for the provider's answer, marked when the provider rejected the key
    (G3 `provider_key_rejected`): `forward` then reports it (SPEC H3) — on the error path only,
    so a successful call pays nothing for it."""
    response = error_response(error)
    response.key_rejected = isinstance(error, ProviderKeyRejected)
    return response


def release_connections() -> None:
    """What `request_finished` does for this thread's database connections, now: a step of an
    async call that ran on a thread hands its connection back (to the pool, under ASGI) as it
    ends, rather than holding it for as long as the answer is relayed (issue 20)."""
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:  # a test's transaction around the request
            connection.close_if_unusable_or_obsolete()


def _report_rejected_key(route: services.Route) -> None:
    """The provider rejected a plan's installed key (SPEC H3): announced upward through byok's
    signal, which flags the subscription once. Never turns the answer into another error."""
    if route.subscription_id is None:
        return
    try:
        announce_installed_key_rejected(
            subscription_id=route.subscription_id, api_key=route.api_key, source="gateway"
        )
    except Exception:
        logger.exception("gateway: could not report a rejected plan key")


def _report_rejected_key_and_release(route: services.Route) -> None:
    try:
        _report_rejected_key(route)
    finally:
        release_connections()


def _error_in_body(route: services.Route, payload: dict) -> GatewayError | None:
    """A 200 that reports an error (and carries no choices), as the provider's module reads it."""
    reading = route.provider.read_chat_body(payload)
    return None if reading.kind is Kind.OK else _provider_error(reading)


# One connection pool per event loop (uvicorn runs one per process), so upstream connections
# are kept alive and reused: a new one per request paid a TCP connect (and, in production, a
# TLS handshake) on every call. Keyed weakly by the loop, as a pool cannot outlive its loop.
# The transport, not an `httpx.AsyncClient`: the gateway needs none of a client's machinery
# (redirects are never followed, there is no auth flow), which cost ≈0.25 ms of CPU per call
# (issue 8), and a client would keep one cookie jar for every customer's calls, sending
# cookies one customer's upstream answer set along with the next customer's request.
#
#
# httpcore's pool looks at every connection it holds each time a request is assigned one or a
# response is closed, so with 1,000 streams open each new stream cost milliseconds of CPU (issue
# 20). The loop's upstream connections are split over up to POOL_SHARDS pools: a call goes to the
# first with fewer than SHARD_REQUESTS requests in flight (so light traffic stays on one pool and
# reuses its kept-alive connections), else to the least busy.
POOL_SHARDS = 32
SHARD_REQUESTS = 32
_transports: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, list[httpx.AsyncHTTPTransport]
] = weakref.WeakKeyDictionary()


def _new_transport() -> httpx.AsyncHTTPTransport:
    context = ssl_context()
    transport = httpx.AsyncHTTPTransport(**_TRANSPORT_OPTIONS, verify=context)
    # The same pool on asyncio's streams instead of anyio's (gateway/network.py), its share of
    # the connection caps.
    limits = _TRANSPORT_OPTIONS["limits"]
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=context,
        max_connections=-(-limits.max_connections // POOL_SHARDS),
        max_keepalive_connections=-(-limits.max_keepalive_connections // POOL_SHARDS),
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=AsyncioBackend(),
    )
    return transport


def _in_flight(transport: httpx.AsyncHTTPTransport) -> int:
    return len(transport._pool._requests)


def _transport() -> httpx.AsyncHTTPTransport:
    loop = asyncio.get_running_loop()
    shards = _transports.get(loop)
    if shards is None:
        shards = _transports[loop] = [_new_transport() for _ in range(POOL_SHARDS)]
    for transport in shards:
        if _in_flight(transport) < SHARD_REQUESTS:
            return transport
    return min(shards, key=_in_flight)


# Every open stream holds its upstream connection for as long as it lasts, so the cap is what
# one process may stream at once (issue 20: 1,000 concurrent streams; 200 queued the rest).
MAX_UPSTREAM_CONNECTIONS = 4096
_TRANSPORT_OPTIONS = {
    "trust_env": False,
    "limits": httpx.Limits(max_connections=MAX_UPSTREAM_CONNECTIONS, max_keepalive_connections=50),
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


@lru_cache(maxsize=32)
def _url(url: str) -> httpx.URL:
    """A provider's chat URL, parsed once (httpx parses a string URL on every request)."""
    return httpx.URL(url)


@sensitive_variables("route", "headers")
def _upstream_request(route: services.Route, body: dict) -> httpx.Request:
    provider = route.provider
    upstream_body = provider.upstream_body(body, route.upstream_model)
    headers = {"Authorization": f"Bearer {route.api_key}", "Content-Type": "application/json"}
    return httpx.Request(
        "POST",
        _url(provider.chat_url()),
        content=json.dumps(upstream_body),
        headers=headers,
        extensions={"timeout": _timeout().as_dict()},
    )


def _unreachable(route: services.Route, exc: Exception) -> JsonResponse:
    if isinstance(exc, httpx.TimeoutException):
        logger.warning("gateway: %s upstream timed out", route.provider_id)
        return error_response(ProviderTimeout())
    logger.warning("gateway: %s upstream unreachable (%s)", route.provider_id, type(exc).__name__)
    return error_response(ProviderError("The provider could not be reached."))


def _refused(route: services.Route, upstream: httpx.Response) -> JsonResponse:
    """A non-200 upstream answer (its body already closed), as our own error; a rate limit
    with upstream's Retry-After when it has a usable one."""
    error = _provider_error(route.provider.read_status(upstream.status_code, upstream.headers))
    logger.warning(
        "gateway: %s upstream answered HTTP %s (%s)",
        route.provider_id,
        upstream.status_code,
        error.code,
    )
    return _provider_failure(error)


def _is_event_stream(upstream: httpx.Response) -> bool:
    content_type = upstream.headers.get("Content-Type", "").split(";")[0].strip().lower()
    return content_type == "text/event-stream"


def _not_a_stream(route: services.Route, raw: bytes | None) -> JsonResponse:
    """A 200 to a streaming request that is no event stream (the start of its body in `raw`):
    a JSON answer reporting an error maps as in a non-streaming answer; anything else (an
    error page, a plain answer) is a provider error. Upstream text is never relayed."""
    try:
        payload = json.loads(raw or b"null")
    except (ValueError, RecursionError):
        payload = None
    error = _error_in_body(route, payload) if isinstance(payload, dict) else None
    if error is not None:
        logger.warning("gateway: %s upstream answered 200 with %s", route.provider_id, error.code)
        return _provider_failure(error)
    logger.warning("gateway: %s upstream answered a stream with no SSE", route.provider_id)
    return error_response(ProviderError("The provider sent an invalid response."))


def _streaming_response(content, *, user_id: int, route, relay: Relay, started: float):
    response = MeteredStreamingResponse(
        content,
        content_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    # The relay's own parts (bytes already), for gateway.asgi to send without Django's
    # per-part wrapper generator, and to close as soon as the client goes.
    response.relayed = content

    def record_stream() -> dict | None:
        if not relay.completed:
            return None
        return {
            "user_id": user_id,
            "route": route,
            "streamed": True,
            "usage": services.usage_from_sse(relay.tail),
            "latency_ms": int((relay.ended - started) * 1000),
            "now": timezone.now(),
        }

    response.set_metering(record_stream)
    return response


def _answer(raw: bytes, *, user_id: int, route, started: float) -> HttpResponse:
    """A complete non-streaming upstream answer (HTTP 200) → our response."""
    try:
        if nested_too_deep(raw):
            raise ValueError
        payload = json.loads(raw)
        if not isinstance(payload, dict):
            raise ValueError
    except (ValueError, RecursionError):
        logger.warning("gateway: %s upstream sent an invalid answer", route.provider_id)
        return error_response(ProviderError("The provider sent an invalid response."))
    error = _error_in_body(route, payload)
    if error is not None:
        logger.warning("gateway: %s upstream answered 200 with %s", route.provider_id, error.code)
        return _provider_failure(error)
    if may_spell_key(raw, route.api_key):
        payload = scrub_json(payload, secret_forms(route.api_key))
    latency_ms = int((time.monotonic() - started) * 1000)
    usage = payload.get("usage")
    payload["model"] = f"{route.provider_id}/{payload.get('model') or route.upstream_model}"
    response = MeteredJsonResponse(payload)
    usage_row = {
        "user_id": user_id,
        "route": route,
        "streamed": False,
        "usage": usage,
        "latency_ms": latency_ms,
        "now": timezone.now(),
    }
    response.set_metering(lambda: usage_row)
    return response


async def _read_async(upstream: httpx.Response, *, limit: int) -> bytes | None:
    """The whole body, or None once it exceeds `limit` bytes; read raw unless upstream encoded
    it (the gateway asks for no encoding; httpx's decoder chain cost CPU on every call)."""
    encoding = upstream.headers.get("Content-Encoding", "").strip().lower()
    parts = upstream.aiter_raw() if encoding in ("", "identity") else upstream.aiter_bytes()
    raw = b""
    async for chunk in parts:
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


@sensitive_variables("route")
async def forward(user_id: int, body: dict, route: services.Route) -> HttpResponse:
    """An admitted request (`gateway.views.chat_completions`) sent on to its provider on this
    event loop's transport, and its answer (a stream relayed as it arrives) as our response."""
    response = await _forward(user_id, body, route)
    if getattr(response, "key_rejected", False):
        await sync_to_async(_report_rejected_key_and_release)(route)
    return response


@sensitive_variables("route")
async def _forward(user_id: int, body: dict, route: services.Route) -> HttpResponse:
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
        relay = Relay(route)
        return _streaming_response(
            relay_events(upstream, relay),
            user_id=user_id,
            route=route,
            relay=relay,
            started=started,
        )

    try:
        raw = await _read_async(upstream, limit=MAX_RESPONSE_BYTES)
        if raw is None:
            return error_response(ProviderError("The provider's response was too large."))
    except httpx.TimeoutException:
        logger.warning("gateway: %s upstream timed out mid-answer", route.provider_id)
        return error_response(ProviderTimeout())
    except httpx.HTTPError:
        logger.warning("gateway: %s upstream sent an invalid answer", route.provider_id)
        return error_response(ProviderError("The provider sent an invalid response."))
    finally:
        await upstream.aclose()
    return _answer(raw, user_id=user_id, route=route, started=started)


@sensitive_variables("route")
def forward_sync(user_id: int, body: dict, route: services.Route) -> HttpResponse:
    """`forward` under WSGI (`gateway.views.chat_completions_sync`): the same steps on the
    process's synchronous transport, with a synchronous generator relaying the stream (which
    gunicorn's workers send as it arrives)."""
    response = _forward_sync(user_id, body, route)
    if getattr(response, "key_rejected", False):
        _report_rejected_key(route)
    return response


@sensitive_variables("route")
def _forward_sync(user_id: int, body: dict, route: services.Route) -> HttpResponse:
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
        relay = Relay(route)
        return _streaming_response(
            relay_events_sync(upstream, relay),
            user_id=user_id,
            route=route,
            relay=relay,
            started=started,
        )

    try:
        raw = _read_sync(upstream, limit=MAX_RESPONSE_BYTES)
        if raw is None:
            return error_response(ProviderError("The provider's response was too large."))
    except httpx.TimeoutException:
        logger.warning("gateway: %s upstream timed out mid-answer", route.provider_id)
        return error_response(ProviderTimeout())
    except httpx.HTTPError:
        logger.warning("gateway: %s upstream sent an invalid answer", route.provider_id)
        return error_response(ProviderError("The provider sent an invalid response."))
    finally:
        upstream.close()
    return _answer(raw, user_id=user_id, route=route, started=started)
