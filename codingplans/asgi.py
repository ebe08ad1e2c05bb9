"""The ASGI entry point (uvicorn): web pages, the API and the streaming gateway.

Under ASGI every request would otherwise open its own database connection (persistent
connections are unsafe with async views), so this process uses a psycopg connection pool unless
DATABASE_POOL_MAX_SIZE says otherwise (0 turns it off).
"""

import itertools
import os
from concurrent.futures import ThreadPoolExecutor

import django
from asgiref.sync import ThreadSensitiveContext
from django.core.handlers.asgi import ASGIHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "codingplans.settings")
os.environ.setdefault("DATABASE_POOL_MAX_SIZE", "20")

# Idle request threads kept for reuse; a burst beyond this many lets the extra ones go.
MAX_IDLE_REQUEST_THREADS = 32


class ReusedThreadASGIHandler(ASGIHandler):
    """Django's handler, with each request's thread-sensitive work (signals, sync middleware,
    `sync_to_async` calls, `response.close()`) on a thread kept from earlier requests.

    Django enters a fresh `ThreadSensitiveContext` per request, and asgiref gives each one a
    new single-thread executor, so every request started and joined an OS thread: py-spy put
    that at about a tenth of the gateway's CPU per call (issue 8: added latency). The
    semantics stay Django's: all of one request's sync work runs on one thread, and no other
    request uses that thread meanwhile; it is only handed to a later request after this one
    has finished (database connections are per request context, not per thread, and closed at
    `request_finished` as before)."""

    def __init__(self):
        super().__init__()
        self._idle: list[ThreadPoolExecutor] = []
        self._numbers = itertools.count(1)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await super().__call__(scope, receive, send)
        executor = (
            self._idle.pop()
            if self._idle
            else ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"asgi-request-{next(self._numbers)}"
            )
        )
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            if len(self._idle) < MAX_IDLE_REQUEST_THREADS:
                self._idle.append(executor)
            else:
                executor.shutdown(wait=False)


django.setup(set_prefix=False)


def _application():
    """Django, with the gateway's bearer calls served beside it by gateway.asgi (issue 20), the
    full stack's response headers applied as the fast path middleware applies them."""
    from codingplans.middleware import GatewayFastPathMiddleware
    from gateway.asgi import GatewayApplication

    def unused(request):
        raise AssertionError("only its response handling is used")

    return GatewayApplication(ReusedThreadASGIHandler(), GatewayFastPathMiddleware(unused))


application = _application()
