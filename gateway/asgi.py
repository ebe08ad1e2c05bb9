"""The gateway route as its own small ASGI application, mounted beside Django in
`codingplans/asgi.py` (issue 20).

A bearer call to POST /api/v1/gateway/chat/completions (SPEC G1) is served here without
Django's request handler: no `request_started` round through a thread, no middleware chain, no
spooled body file, and — the point for long streams — nothing of Django's per-request machinery
held while the answer is relayed: the request's thread goes back to the pool as soon as the view
has its response (a stream used to keep its thread, idle, for as long as it lasted), and each
chunk goes from the relay straight to the server.

The same code answers: the request is a Django `ASGIRequest` built from the scope (a
`gateway.views.LoopRequest`), the view is `gateway.views.chat_completions`, on the same settings,
and the response gets the headers the full stack gives (`secure`: the fast path's security, frame
and CSP handling, `codingplans.middleware`). A bearer call is admitted on the event loop (issue
20: the one bearer check's statement on the loop's own database pool, `codingplans.asyncsql`, and
the rate limits' script on redis.asyncio), so a call makes no thread hop: waking a request
thread and being woken by it again cost the gateway about as much as all of its own work. Usage
is recorded by the response's `aclose()` after the last byte, on the loop too (queued, and
written with the other calls' rows milliseconds later: `services.queue_usage`). A step that
still needs Django's connection (a caller with an empty Authorization header, a rejected plan
key's report) runs on a request thread of this call's own and hands its connection back as it
ends. A client that goes away mid-stream cancels the relay, which closes the upstream request,
as under Django's handler. The ASGI lifespan's end writes the usage still queued and closes the
loop's pools.

Everything else — another path, a session caller (no Authorization header: the session, its
CSRF check and its cookie are Django's), a websocket message — is Django's.
"""

from __future__ import annotations

import asyncio
import io
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing, suppress

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIRequest
from django.core.handlers.exception import response_for_exception
from django.http import HttpResponse

from codingplans import asyncsql, collector
from codingplans.cache import close_loop_clients
from gateway import services, views
from gateway.views import GATEWAY_PATH, MAX_REQUEST_BYTES

logger = logging.getLogger(__name__)

# Idle admission threads kept for reuse (as codingplans.asgi keeps Django's request threads).
MAX_IDLE_THREADS = 32


def _has_authorization(scope) -> bool:
    return any(name.lower() == b"authorization" for name, _ in scope.get("headers", ()))


class GatewayApplication:
    """`GatewayApplication(django_application, headers)`: bearer calls to the gateway path here,
    everything else to `django_application`. `headers` applies what the full stack would:
    `headers.redirect(request)` (SECURE_SSL_REDIRECT's answer, or None) and
    `headers.secure(request, response)` (codingplans.middleware.GatewayFastPathMiddleware)."""

    def __init__(self, django_application, headers) -> None:
        self.django = django_application
        self.headers = headers
        self._idle: list[ThreadPoolExecutor] = []
        self._numbers = iter(range(1, 1 << 62))

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)
        if (
            scope["type"] != "http"
            or scope["path"] != GATEWAY_PATH
            or scope.get("root_path")
            or not _has_authorization(scope)
        ):
            return await self.django(scope, receive, send)
        body = await self._read_body(receive)
        if body is None:  # the client went away before the request was complete
            return
        request = views.LoopRequest(scope, io.BytesIO(body))
        response = await self._respond(request)
        response._handler_class = self.__class__

        if response.streaming:
            sent = await self._stream(response, receive, send)
        else:  # one body message: nothing a disconnect could cut short
            await self._send(response, send)
            sent = True
        if not sent:
            signals.request_finished.send(sender=self.__class__)  # nothing to meter
        elif hasattr(response, "aclose"):
            await response.aclose()  # usage metering (after the last byte), on the loop
        else:
            response.close()  # an error answer: request_finished only

    async def _stream(self, response: HttpResponse, receive, send) -> bool:
        """A streamed answer sent as it comes; False if the client went away first (Django's
        pattern: a client that disconnects cancels the answer being sent, so a relayed stream
        is closed, and the upstream request with it)."""

        async def stream() -> bool:
            try:
                await self._send(response, send)
            except asyncio.CancelledError:
                return False  # the client went away mid-answer
            return True

        tasks = [
            asyncio.create_task(self._disconnected(receive)),
            asyncio.create_task(stream()),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if not task.done():
                task.cancel()
            with suppress(asyncio.CancelledError, RequestAborted):
                await task
        return not tasks[1].cancelled() and tasks[1].result()

    @staticmethod
    async def _lifespan(receive, send) -> None:
        """The server's start and end (Django has no lifespan support): at the start, the
        collector is set for serving (`codingplans.collector`); at the end, this event
        loop's database pool and Redis clients (the bearer calls' admission and metering) are
        closed, so their connections go with the server."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    collector.tune_for_serving()  # after every import: what they built is frozen
                except ValueError as exc:  # a bad SERVER_GC_THRESHOLDS: the server does not start
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await services.flush_usage()
                await asyncsql.close()
                await close_loop_clients()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _read_body(self, receive) -> bytes | None:
        """The request body, or None on a disconnect. Beyond MAX_REQUEST_BYTES the rest is not
        kept: the view answers such a body "too large" (after authentication) either way."""
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            if size <= MAX_REQUEST_BYTES:
                parts.append(chunk)
                size += len(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    async def _respond(self, request: ASGIRequest) -> HttpResponse:
        """The view's response with the full stack's headers; any sync step on a request thread
        of its own, which goes back to the pool as soon as the response is made."""
        executor = (
            self._idle.pop()
            if self._idle
            else ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"gateway-request-{next(self._numbers)}"
            )
        )
        try:
            async with ThreadSensitiveContext(executor=executor):
                try:
                    response = self.headers.redirect(request)
                    if response is None:
                        response = await views.chat_completions(request)
                except Exception as exc:  # as Django's handler: logged, the 500 page
                    response = await sync_to_async(response_for_exception)(request, exc)
                return self.headers.secure(request, response)
        finally:
            if len(self._idle) < MAX_IDLE_THREADS:
                self._idle.append(executor)
            else:
                executor.shutdown(wait=False)

    @staticmethod
    async def _disconnected(receive) -> None:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestAborted()

    @staticmethod
    async def _send(response: HttpResponse, send) -> None:
        """As Django's ASGIHandler.send_response, each streamed part as it comes."""
        headers = [
            (name.encode("ascii"), value.encode("latin1")) for name, value in response.items()
        ]
        headers += [
            (b"Set-Cookie", cookie.output(header="").encode("ascii").strip())
            for cookie in response.cookies.values()
        ]
        await send(
            {"type": "http.response.start", "status": response.status_code, "headers": headers}
        )
        if not response.streaming:
            await send({"type": "http.response.body", "body": response.content})
            return
        # The relay's parts as they are (gateway.proxy), else Django's streaming content.
        relayed = getattr(response, "relayed", None)
        parts = relayed if hasattr(relayed, "__aiter__") else aiter(response)
        async with aclosing(parts) as content:
            async for part in content:
                if part:
                    await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body"})
