"""Django's Redis cache with one connection pool per process.

Django keeps cache objects per asyncio context, so under ASGI (uvicorn, how the web runs) every
request builds a new `RedisCache`, a new connection pool and so a new TCP connection to Redis
for its first cache call (rate limits, quota), torn down again when the request ends. Sharing
the pools per process keeps those connections open across requests, as they already are per
thread under WSGI. redis-py's pools are thread-safe and reset themselves in a forked child.
"""

from __future__ import annotations

import asyncio
import threading
import weakref

import redis.asyncio
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

    def loop_pair_script(self):
        """`_PAIR_LUA` registered on a redis.asyncio client of this event loop's own (a client
        cannot outlive its loop), on the same server and with the same options as the shared
        pool (issue 20: the gateway's rate limits on the loop); `close_loop_clients` closes it."""
        loop = asyncio.get_running_loop()
        server = self._servers[self._get_connection_pool_index(True)]
        scripts = _LOOP_SCRIPTS.get(loop)
        if scripts is None:
            scripts = _LOOP_SCRIPTS.setdefault(loop, {})
        script = scripts.get(server)
        if script is None:
            # The parser Django picks is a sync one; redis.asyncio picks its own.
            options = {k: v for k, v in self._pool_options.items() if k != "parser_class"}
            pool = redis.asyncio.ConnectionPool.from_url(server, **options)
            script = redis.asyncio.Redis(connection_pool=pool).register_script(_PAIR_LUA)
            scripts[server] = script
        return script

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

    def incr_pair_with_expiry(
        self, first: str, first_limit: int, second: str, second_limit: int, timeout: int
    ) -> int:
        """Two fixed-window counters in one round trip (a Lua script): count one under `first`;
        if that is over `first_limit`, stop (1) without counting `second`; else count one under
        `second` and return 2 if that is over `second_limit`, 0 if both are within. Each key is
        created with `timeout` seconds to live, as `incr_with_expiry` does. The gateway checks
        a token's limit and its owner's on every call (issue 20: one Redis round trip, not two).
        """
        keys = [self.make_and_validate_key(first), self.make_and_validate_key(second)]
        client = self._cache.get_client(keys[0], write=True)
        script = _PAIR_SCRIPTS.get(id(client))
        if script is None:
            script = _PAIR_SCRIPTS.setdefault(id(client), client.register_script(_PAIR_LUA))
        return int(script(keys=keys, args=[first_limit, second_limit, timeout]))

    async def aincr_pair_with_expiry(
        self, first: str, first_limit: int, second: str, second_limit: int, timeout: int
    ) -> int:
        """`incr_pair_with_expiry` on the event loop: the same keys and script."""
        keys = [self.make_and_validate_key(first), self.make_and_validate_key(second)]
        script = self._cache.loop_pair_script()
        return int(await script(keys=keys, args=[first_limit, second_limit, timeout]))


async def close_loop_clients() -> None:
    """Close this event loop's Redis connections (the server is shutting down)."""
    for script in _LOOP_SCRIPTS.pop(asyncio.get_running_loop(), {}).values():
        await script.registered_client.connection_pool.disconnect()


_PAIR_LUA = """
redis.call('SET', KEYS[1], 0, 'EX', ARGV[3], 'NX')
local count = redis.call('INCR', KEYS[1])
if count > tonumber(ARGV[1]) then return 1 end
redis.call('SET', KEYS[2], 0, 'EX', ARGV[3], 'NX')
count = redis.call('INCR', KEYS[2])
if count > tonumber(ARGV[2]) then return 2 end
return 0
"""
_PAIR_SCRIPTS: dict[int, object] = {}
_LOOP_SCRIPTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, object]] = (
    weakref.WeakKeyDictionary()
)
