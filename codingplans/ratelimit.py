"""Fixed-window rate limits in the shared cache (Redis), so every web process counts together."""

from __future__ import annotations

import asyncio
import hashlib
import time
import weakref

from asgiref.sync import sync_to_async
from django.core.cache import DEFAULT_CACHE_ALIAS, cache, caches

from codingplans import outages
from codingplans.errors import DomainError


class RateLimited(DomainError):
    code = "rate_limited"
    status = 429
    default_message = "Too many attempts. Wait a minute and try again."


def hit(scope: str, identity: str, *, limit: int, window_seconds: int = 60) -> bool:
    """Count one attempt; True while the caller is within `limit` per window.

    Fails open: when the cache (Redis) cannot be reached the attempt is allowed, counted and
    logged (codingplans.outages), so a Redis outage costs the brute-force guard for its
    duration, never the log-in, purchase or gateway call itself (issue 13 item 5)."""
    if limit <= 0:
        return True
    try:
        return _hit(scope, identity, limit=limit, window_seconds=window_seconds)
    except Exception as exc:  # any backend error: allow
        outages.record("rate limits", exc)
        return True


def _hit(scope: str, identity: str, *, limit: int, window_seconds: int) -> bool:
    digest = hashlib.sha256(f"{scope}:{identity}".encode()).hexdigest()[:32]
    key = f"rl:{scope}:{digest}:{int(time.time() // window_seconds)}"
    if hasattr(cache, "incr_with_expiry"):  # the Redis cache (codingplans.cache)
        return cache.incr_with_expiry(key, window_seconds + 10) <= limit
    if cache.add(key, 1, timeout=window_seconds + 10):
        return True
    try:
        return cache.incr(key) <= limit
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=window_seconds + 10)
        return True


def _pair_keys(first: tuple[str, str, int], second: tuple[str, str, int], window_seconds: int):
    window = int(time.time() // window_seconds)
    return [
        f"rl:{scope}:{hashlib.sha256(f'{scope}:{identity}'.encode()).hexdigest()[:32]}:{window}"
        for scope, identity, _limit in (first, second)
    ]


def _counted_apart(
    first: tuple[str, str, int], second: tuple[str, str, int], backend=cache
) -> bool:
    """Whether the pair cannot be counted in one script: a budget that is off (limit 0), or a
    cache that is not the Redis one (codingplans.cache)."""
    return first[2] <= 0 or second[2] <= 0 or not hasattr(backend, "incr_pair_with_expiry")


# The default cache as this event loop's rate limits use it. Django keeps a cache object per
# asyncio context, so each call on the loop (a task of its own) built a new one, client and
# all; the object holds no connection (codingplans.cache shares the pools), so one per loop
# serves every call on it.
_loop_caches: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _loop_cache():
    loop = asyncio.get_running_loop()
    backend = _loop_caches.get(loop)
    if backend is None:
        backend = _loop_caches[loop] = caches.create_connection(DEFAULT_CACHE_ALIAS)
    return backend


def hit_pair(
    first: tuple[str, str, int], second: tuple[str, str, int], *, window_seconds: int = 60
) -> int:
    """`hit` for two (scope, identity, limit) budgets in order, the second counted only when the
    first allows the attempt: 0 when both allow it, 1 or 2 for the one that refused. One Redis
    round trip (codingplans.cache); fails open like `hit`."""
    if _counted_apart(first, second):
        if not hit(*first[:2], limit=first[2], window_seconds=window_seconds):
            return 1
        return 0 if hit(*second[:2], limit=second[2], window_seconds=window_seconds) else 2
    keys = _pair_keys(first, second, window_seconds)
    try:
        return cache.incr_pair_with_expiry(
            keys[0], first[2], keys[1], second[2], window_seconds + 10
        )
    except Exception as exc:  # any backend error: allow
        outages.record("rate limits", exc)
        return 0


async def hit_pair_async(
    first: tuple[str, str, int], second: tuple[str, str, int], *, window_seconds: int = 60
) -> int:
    """`hit_pair` on the event loop (the same counters, keys and script, on redis.asyncio), for
    the gateway's bearer calls under ASGI (issue 20); fails open the same way."""
    shared = _loop_cache()
    if _counted_apart(first, second, shared):
        return await sync_to_async(hit_pair)(first, second, window_seconds=window_seconds)
    keys = _pair_keys(first, second, window_seconds)
    try:
        return await shared.aincr_pair_with_expiry(
            keys[0], first[2], keys[1], second[2], window_seconds + 10
        )
    except Exception as exc:  # any backend error: allow
        outages.record("rate limits", exc)
        return 0


def enforce(scope: str, identity: str, *, limit: int, window_seconds: int = 60) -> None:
    if not hit(scope, identity, limit=limit, window_seconds=window_seconds):
        raise RateLimited()
