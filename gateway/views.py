"""POST /api/v1/gateway/chat/completions (SPEC G1–G3).

An async view, so that under ASGI (uvicorn, as `make dev` serves it) a slow upstream stream
holds a coroutine, not a worker thread. The customer's key is decrypted only for the upstream
call, and no upstream error text, header or key ever reaches the response or the logs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

import httpx
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

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

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1024 * 1024
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
USAGE_SCAN_BYTES = 64 * 1024
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


def _authenticate(request: HttpRequest):
    return bearer_or_session(request)


def _check_rate_limit(request: HttpRequest, user) -> None:
    """Per token (or per session user): a fixed one-minute window in Redis."""
    limit = int(getattr(settings, "GATEWAY_RATE_LIMIT_PER_MINUTE", 600))
    who = request.headers.get("Authorization") or f"user:{user.pk}"
    bucket = hashlib.sha256(who.encode()).hexdigest()[:32]
    key = f"gw-rl:{bucket}:{int(time.time() // 60)}"
    if cache.add(key, 1, timeout=70):
        return
    try:
        count = cache.incr(key)
    except ValueError:
        cache.set(key, 1, timeout=70)
        return
    if count > limit:
        raise RateLimited()


def _map_status(response: httpx.Response) -> DomainError:
    if response.status_code in (401, 403):
        return ProviderKeyRejected()
    if response.status_code == 429:
        return ProviderRateLimited()
    return ProviderError(f"The provider returned an error (HTTP {response.status_code}).")


def _retry_after(response: httpx.Response) -> str | None:
    value = response.headers.get("Retry-After", "").strip()
    return value if value.isdigit() and len(value) <= 6 else None


def _client() -> httpx.AsyncClient:
    seconds = float(getattr(settings, "GATEWAY_TIMEOUT_SECONDS", 60))
    return httpx.AsyncClient(
        base_url=settings.MINIMAX_API_BASE_URL,
        timeout=httpx.Timeout(seconds, connect=5.0),
        follow_redirects=False,
        trust_env=False,
    )


@csrf_exempt  # bearer tokens carry no ambient authority; session callers are CSRF-checked
async def chat_completions(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return JsonResponse(
            {"error": {"code": "method_not_allowed", "message": "Use POST."}}, status=405
        )
    try:
        user = await sync_to_async(_authenticate)(request)
    except DomainError as exc:
        return _error(exc)
    if user is None:
        return JsonResponse(
            {
                "error": {
                    "code": "unauthenticated",
                    "message": "Send your personal API token as `Authorization: Bearer <token>`.",
                }
            },
            status=401,
        )
    try:
        await sync_to_async(_check_rate_limit)(request, user)
        if len(request.body) > MAX_REQUEST_BYTES:
            raise InvalidRequest("The request body is too large.")
        try:
            body = json.loads(request.body or b"null")
        except ValueError:
            raise InvalidRequest() from None
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            raise InvalidRequest()
        route = await sync_to_async(services.resolve_route)(user=user, model=body.get("model"))
    except DomainError as exc:
        return _error(exc)

    upstream_body = {**body, "model": route.upstream_model}
    stream = body.get("stream") is True
    headers = {"Authorization": f"Bearer {route.api_key}", "Content-Type": "application/json"}
    client = _client()
    started = time.monotonic()
    try:
        upstream = await client.send(
            client.build_request(
                "POST", "/v1/chat/completions", content=json.dumps(upstream_body), headers=headers
            ),
            stream=True,
        )
    except httpx.TimeoutException:
        await client.aclose()
        return _error(ProviderTimeout())
    except httpx.HTTPError:
        await client.aclose()
        return _error(ProviderError("The provider could not be reached."))

    if upstream.status_code != 200:
        error = _map_status(upstream)
        retry_after = _retry_after(upstream)
        await upstream.aclose()
        await client.aclose()
        return _error(error, retry_after=retry_after if upstream.status_code == 429 else None)

    if stream:
        return StreamingHttpResponse(
            _relay(upstream, client, user_id=user.pk, route=route, started=started),
            content_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

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
        return _error(ProviderTimeout())
    except (httpx.HTTPError, ValueError):
        return _error(ProviderError("The provider sent an invalid response."))
    finally:
        await upstream.aclose()
        await client.aclose()
    latency_ms = int((time.monotonic() - started) * 1000)
    await sync_to_async(services.record_usage)(
        user_id=user.pk,
        route=route,
        streamed=False,
        usage=payload.get("usage"),
        latency_ms=latency_ms,
        now=timezone.now(),
    )
    payload["model"] = f"{route.provider_id}/{payload.get('model') or route.upstream_model}"
    return JsonResponse(payload)


async def _relay(upstream: httpx.Response, client: httpx.AsyncClient, *, user_id, route, started):
    """Pass server-sent events through as they arrive (G2). If the client goes away, the
    generator is closed and the upstream request with it."""
    tail = b""
    completed = False
    try:
        async for chunk in upstream.aiter_raw():
            tail = (tail + chunk)[-USAGE_SCAN_BYTES:]
            yield chunk
        completed = True
    except httpx.HTTPError:
        # Upstream broke mid-stream: end our stream with an SSE error event, sanitized.
        yield STREAM_BROKEN_EVENT
    finally:
        await upstream.aclose()
        await client.aclose()
    if completed:
        await sync_to_async(services.record_usage)(
            user_id=user_id,
            route=route,
            streamed=True,
            usage=services.usage_from_sse(tail),
            latency_ms=int((time.monotonic() - started) * 1000),
            now=timezone.now(),
        )
