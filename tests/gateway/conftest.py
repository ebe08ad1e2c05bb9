"""Gateway fixtures: buying a plan, and the application served by real HTTP servers.

`asgi_server` runs `codingplans.asgi.application` (what `make dev` serves) under uvicorn in a
background thread on a loopback socket; `wsgi_server` runs `gunicorn codingplans.wsgi` as a
child process on the test database. Tests that use them must be transactional
(`@pytest.mark.django_db(transaction=True)`) so that the servers, which open their own database
connections, see the committed data.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from django.conf import settings
from django.db import connections
from django.utils import timezone

from subscriptions.purchase import purchase_plan

URL = "/api/v1/gateway/chat/completions"
PLUS = "minimax-token-plan-plus"
BODY = {"model": "minimax/MiniMax-M2", "messages": [{"role": "user", "content": "hello there"}]}

_purchases = itertools.count(1)


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """Users are made with a password; the production hasher costs ~1 s per user."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def buy_plan(stock, standin):
    """Buy a plan for a user from fresh stock: returns (subscription id, assigned credential).
    The stand-in's request log is cleared afterwards (a purchase may check the key upstream),
    so it shows only gateway traffic."""

    def buy(user, plan_id: str = PLUS) -> tuple[int, str]:
        (key,) = stock(plan_id)
        out = purchase_plan(
            user=user,
            plan_id=plan_id,
            idempotency_key=f"gw-{next(_purchases)}",
            now=timezone.now(),
        )
        assert out.status == 201, out.body
        with standin.state.lock:
            standin.state.requests.clear()
        return out.subscription_id, key

    return buy


class AsgiServer:
    def __init__(self) -> None:
        from codingplans.asgi import application

        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        host, port = self._socket.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        config = uvicorn.Config(
            app=application,
            lifespan="on",  # gateway.asgi closes its event loop's pools at the end
            log_config=None,  # leave the project's logging (and its redaction filter) alone
            access_log=False,
            timeout_graceful_shutdown=3,
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def start(self) -> AsgiServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self._thread.is_alive(), "uvicorn did not start"
            assert time.monotonic() < deadline, "uvicorn did not start within 10 s"
            time.sleep(0.01)
        # Warm up (URLconf import, first database connection) so timings measure streaming.
        with httpx.Client(base_url=self.url, timeout=10) as client:
            assert client.get("/accounts/login/").status_code == 200
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()


@pytest.fixture
def asgi_server(transactional_db) -> Iterator[AsgiServer]:
    server = AsgiServer().start()
    try:
        yield server
    finally:
        server.stop()
        connections.close_all()


class WsgiServer:
    """`gunicorn codingplans.wsgi` as a real child process, with gunicorn's default options (one
    sync worker) apart from the loopback port, on this test's database and stand-in; its
    stderr (the server's own log) is kept in `stderr()`. Production-like: DEBUG off
    (`bench.common.server_env`)."""

    def __init__(self, **env: str) -> None:
        from urllib.parse import urlparse

        from bench.common import BIN, ROOT, free_port, server_env

        base = os.environ.get("DATABASE_URL")
        if not base:
            pytest.fail("DATABASE_URL is not set: run the tests through `make test`")
        database = urlparse(base)._replace(path="/" + settings.DATABASES["default"]["NAME"])
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._env = server_env(
            DATABASE_URL=database.geturl(),
            MINIMAX_API_BASE_URL=settings.MINIMAX_API_BASE_URL,
            GATEWAY_RATE_LIMIT_PER_MINUTE=str(settings.GATEWAY_RATE_LIMIT_PER_MINUTE),
            GATEWAY_RATE_LIMIT_PER_USER_PER_MINUTE=str(
                settings.GATEWAY_RATE_LIMIT_PER_USER_PER_MINUTE
            ),
            LOG_LEVEL="INFO",
            **env,
        )
        self._argv = [str(BIN / "gunicorn"), "codingplans.wsgi", "--bind", f"127.0.0.1:{self.port}"]
        self._cwd = ROOT
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self._proc: subprocess.Popen | None = None

    def start(self) -> WsgiServer:
        from bench.common import wait_for_port

        self._proc = subprocess.Popen(
            self._argv,
            env=self._env,
            cwd=self._cwd,
            stdout=self._log,
            stderr=self._log,
            start_new_session=True,
        )
        try:
            wait_for_port(self.port, self._proc)
        except RuntimeError:
            self.stop()
            raise AssertionError(f"gunicorn did not start:\n{self.stderr()}") from None
        return self

    def stderr(self) -> str:
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the master and its worker
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def wsgi_server(transactional_db, standin) -> Iterator[WsgiServer]:
    server = WsgiServer().start()
    try:
        yield server
    finally:
        server.stop()
        connections.close_all()
