"""Gateway services: resolve the caller's enabled provider key, record usage (SPEC G1, G3)."""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import Count, Sum

from accounts.tokens import bearer_lookup, bearer_lookup_async
from byok.models import ByokKey
from codingplans import asyncsql, crypto
from codingplans import sql as lean
from gateway.errors import NoProviderKey, UnknownProvider
from gateway.models import GatewayRequest
from upstream.providers import registry
from upstream.providers.base import Provider

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    provider_id: str
    upstream_model: str
    # Decrypted only for this call; never logged or returned (kept out of repr and tracebacks).
    api_key: str = field(repr=False)
    subscription_id: int | None

    @property
    def provider(self) -> Provider:
        """The provider module that speaks this route's upstream API (SPEC V1)."""
        return registry.provider(self.provider_id)


def split_model(model: object) -> tuple[str, str] | None:
    """`<provider id>/<model>` → (provider id, "<model>") for a registered provider (SPEC G1,
    V4); None otherwise."""
    if not isinstance(model, str) or "/" not in model:
        return None
    provider_id, _, upstream_model = model.partition("/")
    if registry.get(provider_id) is None or not upstream_model:
        return None
    return provider_id, upstream_model


def _route(provider_id: str, upstream_model: str, entry: tuple[str, int | None] | None) -> Route:
    """The route through an enabled entry given as (encrypted key, subscription id)."""
    if entry is None:
        raise NoProviderKey()
    encrypted_key, subscription_id = entry
    try:
        api_key = crypto.decrypt(encrypted_key)
    except crypto.SecretUnavailable:  # encrypted under a retired key: unusable until replaced
        raise NoProviderKey(
            "Your stored key for this provider can no longer be read; replace it in BYOK."
        ) from None
    return Route(
        provider_id=provider_id,
        upstream_model=upstream_model,
        api_key=api_key,
        subscription_id=subscription_id,
    )


def resolve_route(*, user, model: object) -> Route:
    """`<provider id>/<model>` → the caller's enabled BYOK entry for that provider, whatever its
    origin (G1, V4)."""
    parts = split_model(model)
    if parts is None:
        raise UnknownProvider()
    entry = (
        ByokKey.objects.filter(user=user, provider_id=parts[0], enabled=True)
        .values_list("encrypted_key", "subscription_id")
        .first()
    )
    return _route(*parts, entry)


@dataclass(frozen=True)
class BearerCaller:
    """A bearer token (its id, for the rate limit), its owner and, read in the same query, their
    enabled entry (if any) for the provider the request names: (encrypted key, subscription
    id)."""

    user_id: int
    token_id: int
    entry: tuple[str, int | None] | None = field(repr=False)

    def route(self, model: object) -> Route:
        parts = split_model(model)
        if parts is None:
            raise UnknownProvider()
        return _route(*parts, self.entry)


# The caller's enabled entry for the provider the request names, read in the bearer lookup's
# own round trip (accounts.tokens holds the token rules).
_ENTRY_COLUMNS = ", k.encrypted_key, k.subscription_id, k.id AS entry_id"
_ENTRY_JOIN = (
    "LEFT JOIN {byok} k ON k.user_id = t.user_id AND k.provider_id = %(provider_id)s AND k.enabled"
)


def _bearer_query(provider_id: str | None) -> dict:
    return {
        "extra_columns": _ENTRY_COLUMNS,
        "extra_joins": _ENTRY_JOIN.format(byok=lean.table(ByokKey)),
        "params": {"provider_id": provider_id or ""},
    }


def _bearer_caller(row) -> BearerCaller | None:
    if row is None:
        return None
    entry = (row.encrypted_key, row.subscription_id) if row.entry_id is not None else None
    return BearerCaller(user_id=row.user_id, token_id=row.token_id, entry=entry)


def bearer_caller(token: str, *, provider_id: str | None, now: datetime) -> BearerCaller | None:
    """The one bearer-token check (`accounts.tokens.bearer_lookup`: prefix, hash, not revoked,
    active owner, last use noted at most once a minute) with `resolve_route`'s key lookup in the
    same query: one round trip, and no ORM query building on the gateway's hot path (issue 8:
    added latency)."""
    return _bearer_caller(bearer_lookup(token, now=now, **_bearer_query(provider_id)))


async def bearer_caller_async(
    token: str, *, provider_id: str | None, now: datetime
) -> BearerCaller | None:
    """`bearer_caller` on the event loop (`accounts.tokens.bearer_lookup_async`: the same check,
    the same statement), for the gateway's bearer calls under ASGI (issue 20)."""
    return _bearer_caller(await bearer_lookup_async(token, now=now, **_bearer_query(provider_id)))


def _usage_row(
    *,
    user_id: int,
    route: Route,
    streamed: bool,
    usage: dict | None,
    latency_ms: int,
    now: datetime,
) -> dict:
    usage = usage if isinstance(usage, dict) else {}

    def tokens(name: str) -> int:
        value = usage.get(name)
        return value if isinstance(value, int) and 0 <= value < 2**31 else 0

    return {
        "user_id": user_id,
        "subscription_id": route.subscription_id,
        "provider_id": route.provider_id,
        "model": route.upstream_model[:100],
        "streamed": streamed,
        "prompt_tokens": tokens("prompt_tokens"),
        "completion_tokens": tokens("completion_tokens"),
        "latency_ms": max(0, min(latency_ms, 2**31 - 1)),
        "created_at": now,
    }


def record_usage(
    *,
    user_id: int,
    route: Route,
    streamed: bool,
    usage: dict | None,
    latency_ms: int,
    now: datetime,
) -> None:
    """One GatewayRequest row for a completed call: a lean, prepared INSERT (codingplans.sql)."""
    lean.insert(
        GatewayRequest,
        **_usage_row(
            user_id=user_id,
            route=route,
            streamed=streamed,
            usage=usage,
            latency_ms=latency_ms,
            now=now,
        ),
    )


# Usage rows recorded on an event loop are written together, USAGE_WRITE_DELAY after the first
# of them: one INSERT (one round trip) for every call that ended meanwhile, instead of
# an INSERT per call on the loop that serves the next ones (issue 20).
USAGE_WRITE_DELAY = 0.02
_usage_queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[dict]] = (
    weakref.WeakKeyDictionary()
)
_usage_writes: set[asyncio.Task] = set()


def queue_usage(
    *,
    user_id: int,
    route: Route,
    streamed: bool,
    usage: dict | None,
    latency_ms: int,
    now: datetime,
) -> None:
    """`record_usage` on the event loop (codingplans.asyncsql): the same row, the same
    statement, written with the others recorded within USAGE_WRITE_DELAY (`flush_usage` at
    the server's end writes what is left)."""
    row = _usage_row(
        user_id=user_id,
        route=route,
        streamed=streamed,
        usage=usage,
        latency_ms=latency_ms,
        now=now,
    )
    loop = asyncio.get_running_loop()
    queue = _usage_queues.get(loop)
    if queue is None:
        queue = _usage_queues[loop] = []
        loop.call_later(USAGE_WRITE_DELAY, _start_usage_write, loop)
    queue.append(row)


def _start_usage_write(loop: asyncio.AbstractEventLoop) -> None:
    task = loop.create_task(_write_usage(_usage_queues.pop(loop, [])))
    _usage_writes.add(task)
    task.add_done_callback(_usage_writes.discard)


async def _write_usage(rows: list[dict]) -> None:
    if not rows:
        return
    try:
        await asyncsql.insert_many(GatewayRequest, rows)
    except Exception:
        logger.exception("gateway: could not record usage of %d calls", len(rows))


async def flush_usage() -> None:
    """Write this loop's queued usage now, and wait for the writes under way (the server is
    shutting down)."""
    loop = asyncio.get_running_loop()
    await _write_usage(_usage_queues.pop(loop, []))
    pending = [task for task in _usage_writes if task.get_loop() is loop]
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)


def usage_in_period(subscription) -> dict[str, int]:
    """Requests and tokens routed through the plan's installed entry in the current period."""
    totals = GatewayRequest.objects.filter(
        subscription=subscription, created_at__gte=subscription.current_period_start
    ).aggregate(
        requests=Count("id"), prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens")
    )
    return {
        "requests": totals["requests"] or 0,
        "prompt_tokens": totals["prompt"] or 0,
        "completion_tokens": totals["completion"] or 0,
    }


def usage_from_sse(buffer: bytes) -> dict | None:
    """The last `usage` block in a stream of `data:` lines, if any."""
    found = None
    for line in buffer.splitlines():
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if not payload or payload == b"[DONE]" or b'"usage"' not in payload:
            continue
        try:
            found = json.loads(payload).get("usage") or found
        except (ValueError, AttributeError):
            continue
    return found
