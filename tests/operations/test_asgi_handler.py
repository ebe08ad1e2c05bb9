"""codingplans.asgi.ReusedThreadASGIHandler: Django's per-request thread-sensitive semantics, on
threads kept from earlier requests instead of a new OS thread per request (issue 8)."""

from __future__ import annotations

import asyncio
import threading

from django.core.signals import request_finished, request_started

from codingplans.asgi import ReusedThreadASGIHandler


def _scope(path: str) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


async def _get(handler: ReusedThreadASGIHandler, path: str) -> int:
    sent: list[dict] = []
    requested = False

    async def receive():
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(3600)  # the client stays connected
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    await handler(_scope(path), receive, send)
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


def _record_threads():
    started: list[str] = []
    finished: list[str] = []

    def on_start(**kwargs):
        started.append(threading.current_thread().name)

    def on_finish(**kwargs):
        finished.append(threading.current_thread().name)

    request_started.connect(on_start, weak=False)
    request_finished.connect(on_finish, weak=False)
    return (
        started,
        finished,
        lambda: (
            request_started.disconnect(on_start),
            request_finished.disconnect(on_finish),
        ),
    )


def test_sequential_requests_reuse_one_thread_and_each_keeps_its_sync_work_on_it():
    handler = ReusedThreadASGIHandler()
    started, finished, done = _record_threads()
    try:

        async def main():
            for _ in range(3):
                assert await _get(handler, "/no-such-page/") == 404

        asyncio.run(main())
    finally:
        done()
    # One request's signals (start and finish) ran on one thread, and later requests got
    # the same thread back instead of a new one.
    assert len(started) == len(finished) == 3
    assert started == finished
    assert len(set(started)) == 1
    assert started[0] != threading.current_thread().name


def test_concurrent_requests_get_threads_of_their_own():
    handler = ReusedThreadASGIHandler()
    started, finished, done = _record_threads()
    barrier = threading.Barrier(2, timeout=10)

    def wait_for_the_other(**kwargs):
        barrier.wait()  # both requests are in their sync work at the same time

    request_started.connect(wait_for_the_other, weak=False)
    try:

        async def main():
            return await asyncio.gather(
                _get(handler, "/no-such-page/"), _get(handler, "/no-such-page/")
            )

        assert asyncio.run(main()) == [404, 404]
    finally:
        request_started.disconnect(wait_for_the_other)
        done()
    assert len(set(started)) == 2
    assert sorted(started) == sorted(finished)
