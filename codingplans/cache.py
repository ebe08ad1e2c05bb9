"""Django's Redis cache with one connection pool per process.

Django keeps cache objects per asyncio context, so under ASGI (uvicorn, how the web runs) every
request builds a new `RedisCache`, a new connection pool and so a new TCP connection to Redis
for its first cache call (rate limits, quota), torn down again when the request ends. Sharing
the pools per process keeps those connections open across requests, as they already are per
thread under WSGI. redis-py's pools are thread-safe and reset themselves in a forked child.
"""

from __future__ import annotations

import threading

from django.core.cache.backends.redis import RedisCache, RedisCacheClient


class SharedPoolRedisCacheClient(RedisCacheClient):
    _shared_pools: dict[tuple[str, str], object] = {}
    _shared_clients: dict[int, object] = {}
    _shared_lock = threading.Lock()

    def get_client(self, key=None, *, write=False):
        """One `redis.Redis` per shared pool (it is thread-safe): Django builds a new one per
        call, which py-spy put at a third of the gateway's rate-limit hit (issue 8)."""
        pool = self._get_connection_pool(write)
        client = self._shared_clients.get(id(pool))
        if client is None:
            client = self._shared_clients.setdefault(id(pool), self._client(connection_pool=pool))
        return client

    def _get_connection_pool(self, write):
        index = self._get_connection_pool_index(write)
        key = (self._servers[index], repr(sorted(self._pool_options.items())))
        pool = self._shared_pools.get(key)
        if pool is None:
            with self._shared_lock:
                pool = self._shared_pools.get(key)
                if pool is None:
                    pool = self._pool_class.from_url(self._servers[index], **self._pool_options)
                    self._shared_pools[key] = pool
        return pool


class SharedPoolRedisCache(RedisCache):
    def __init__(self, server, params):
        super().__init__(server, params)
        self._class = SharedPoolRedisCacheClient

    def incr_with_expiry(self, key: str, timeout: int) -> int:
        """Count one more under `key`, creating it with `timeout` seconds to live: one round
        trip (a pipelined SET NX EX and INCR) where `add` then `incr` took two — the rate
        limiter runs on every gateway call."""
        full_key = self.make_and_validate_key(key)
        client = self._cache.get_client(full_key, write=True)
        pipe = client.pipeline(transaction=False)
        pipe.set(full_key, 0, ex=timeout, nx=True)
        pipe.incr(full_key)
        return int(pipe.execute()[1])
