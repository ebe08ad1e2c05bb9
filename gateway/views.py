"""POST /api/v1/gateway/chat/completions (SPEC G1–G3): the view — admission (authentication,
rate limits, the body with its nesting cap, the route to the caller's key) — in front of the proxy
(`gateway/proxy.py`: the upstream call, the answer, the stream relay, metering).

An async view, so that under ASGI (uvicorn, as `make dev` serves it) a slow upstream stream
holds a coroutine, not a worker thread. Under WSGI (gunicorn's sync workers, and Django's test
client) the same steps run synchronously on the request's own thread, on a synchronous httpx
transport: Django would otherwise run the coroutine in an event loop of its own that is closed
as soon as the view returns, while the streamed answer (and the pooled connection) still
belonged to it ("Event loop is closed", issue 13).
"""

from __future__ import annotations

import json

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.debug import sensitive_variables

from accounts.auth import bearer_or_session
from accounts.tokens import bearer_token
from codingplans import ratelimit
from codingplans.errors import DomainError
from gateway import services
from gateway.errors import InvalidRequest, RateLimited, error_response
from gateway.nesting import MAX_JSON_DEPTH, nested_too_deep
from gateway.proxy import forward, forward_sync, release_connections

GATEWAY_PATH = "/api/v1/gateway/chat/completions"
MAX_REQUEST_BYTES = 1024 * 1024


class _Unauthenticated(Exception):
    """No valid token or session: answered with 401 and `WWW-Authenticate`."""


class LoopRequest(ASGIRequest):
    """A bearer call served by `gateway.asgi` beside Django: admitted on the event loop
    (`_admit_on_loop`), its usage recorded there too (`gateway.proxy`), so a non-streamed call
    makes no thread hop (issue 20). Only real servers make these; Django's own ASGI handler
    (and its AsyncClient, inside a test's transaction) keeps Django's connection."""


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
    token, body, body_error, provider_id = _bearer_call(request, header)
    caller = services.bearer_caller(token, provider_id=provider_id, now=timezone.now())
    if caller is None:
        raise _Unauthenticated()
    _refuse(ratelimit.hit_pair(*_budgets(f"token:{caller.token_id}", user_id=caller.user_id)))
    return _admitted(caller, body, body_error)


async def _admit_on_loop(request: LoopRequest) -> tuple[int, dict, services.Route]:
    """`_admit` for a bearer call, on the event loop: the same steps in the same order, the
    token and key read (`services.bearer_caller_async`: the one bearer check's statement) and
    the rate limits counted (`ratelimit.hit_pair_async`: the same script) without a thread."""
    header = request.headers.get("Authorization", "")
    if not header:  # an empty header: `_admit` treats the caller as a session one
        return await sync_to_async(_admit_and_release)(request)
    token, body, body_error, provider_id = _bearer_call(request, header)
    caller = await services.bearer_caller_async(token, provider_id=provider_id, now=timezone.now())
    if caller is None:
        raise _Unauthenticated()
    budgets = _budgets(f"token:{caller.token_id}", user_id=caller.user_id)
    _refuse(await ratelimit.hit_pair_async(*budgets))
    return _admitted(caller, body, body_error)


def _bearer_call(
    request: HttpRequest, header: str
) -> tuple[str, dict | None, Exception | None, str | None]:
    """A bearer call's token, its body (or the error it answers, once the caller is known) and
    the provider its model names (read with the token: one round trip)."""
    token = bearer_token(header)
    if token is None:
        raise _Unauthenticated()
    body, body_error = None, None
    try:
        body = _request_body(request)
    except DomainError as exc:
        body_error = exc
    parts = services.split_model(body.get("model") if body else None)
    return token, body, body_error, parts[0] if parts else None


def _admitted(
    caller: services.BearerCaller, body: dict | None, body_error: Exception | None
) -> tuple[int, dict, services.Route]:
    if body_error is not None:
        raise body_error
    return caller.user_id, body, caller.route(body.get("model"))


def _admit_and_release(request: HttpRequest) -> tuple[int, dict, services.Route]:
    """`_admit`, then its database connection handed back (to the pool, under ASGI) before the
    answer is relayed: a stream may last minutes, and held its connection until the request
    finished, so a pool of 20 admitted 20 streams and timed the 21st out (issue 20). Metering
    takes one from the pool again after the last byte."""
    try:
        return _admit(request)
    finally:
        release_connections()


def _budgets(who: str, *, user_id: int) -> tuple[tuple[str, str, int], tuple[str, str, int]]:
    """Fixed one-minute windows in the shared cache: `who`'s own budget (a token, by its id —
    never the header's spelling — or a session user), then the user's cap across all of their
    tokens and their session, so making more tokens buys no more (issue 13). A request the
    token's own limit refuses does not count against the user's cap."""
    return (
        ("gateway", who, int(settings.GATEWAY_RATE_LIMIT_PER_MINUTE)),
        ("gateway-user", str(user_id), int(settings.GATEWAY_RATE_LIMIT_PER_USER_PER_MINUTE)),
    )


def _rate_limit(who: str, *, user_id: int) -> None:
    _refuse(ratelimit.hit_pair(*_budgets(who, user_id=user_id)))  # one Redis round trip


def _refuse(refused: int) -> None:
    """`ratelimit.hit_pair`'s answer as the error it calls for, if any."""
    if refused == 1:
        raise RateLimited()
    if refused == 2:
        raise RateLimited(
            "Too many requests from your account (all your API tokens together); "
            "slow down and retry in a minute."
        )


def _request_body(request: HttpRequest) -> dict:
    try:
        raw = request.body
    except RequestDataTooBig:
        raise InvalidRequest("The request body is too large.") from None
    if len(raw) > MAX_REQUEST_BYTES:
        raise InvalidRequest("The request body is too large.")
    if nested_too_deep(raw):
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
        if isinstance(request, LoopRequest):
            user_id, body, route = await _admit_on_loop(request)
        else:
            user_id, body, route = await sync_to_async(_admit_and_release)(request)
    except DomainError as exc:
        return error_response(exc)
    except _Unauthenticated:
        return _unauthenticated()
    return await forward(user_id, body, route)  # gateway/proxy.py


@sensitive_variables("route")
def chat_completions_sync(request: HttpRequest) -> HttpResponse:
    """`chat_completions` under WSGI: the same steps, on a synchronous httpx transport, with a
    synchronous generator relaying the stream (which gunicorn's workers send as it arrives)."""
    if request.method != "POST":
        return _method_not_allowed()
    try:
        user_id, body, route = _admit(request)
    except DomainError as exc:
        return error_response(exc)
    except _Unauthenticated:
        return _unauthenticated()
    return forward_sync(user_id, body, route)
