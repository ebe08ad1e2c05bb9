"""A database restart fails no request (issue 13 item 13).

After PostgreSQL restarts (a failover, a maintenance restart) every connection a web process
kept is dead. A real server (uvicorn with its psycopg pool, as the Procfile runs it; gunicorn with
persistent connections, the WSGI configuration) serves requests, then every backend of the test
database is terminated — what a restart is from the clients' point of view (`AdminShutdown`,
"terminating connection due to administrator command") — and the next requests must all succeed:
the pool checks a connection before handing it out, a persistent connection is health-checked
before a request reuses it.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from django.db import connection
from django.utils import timezone

from accounts.tokens import create_api_token
from gateway.models import GatewayRequest
from tests.gateway.test_canary import install
from tests.servers import served, uvicorn_argv

pytestmark = pytest.mark.django_db(transaction=True)

N = 30


def _terminate_other_backends() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND datname = current_database()"
        )
        return cursor.fetchone()[0]


def _statuses(url: str, token: str, n: int, *, parallel: int) -> list[int]:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=15) as client:

        def get(_i: int) -> int:
            return client.get("/api/v1/credits").status_code

        with ThreadPoolExecutor(parallel) as pool:
            return list(pool.map(get, range(n)))


def _gateway_statuses(url: str, token: str, n: int, *, parallel: int) -> list[int]:
    headers = {"Authorization": f"Bearer {token}"}
    body = {"model": "minimax/MiniMax-M2", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=url, headers=headers, timeout=15) as client:

        def post(_i: int) -> int:
            return client.post("/api/v1/gateway/chat/completions", json=body).status_code

        with ThreadPoolExecutor(parallel) as pool:
            return list(pool.map(post, range(n)))


def _survives_a_restart(url: str, token: str, statuses=_statuses) -> None:
    # Warm up: several connections in use at once, then kept (pool / persistent connections).
    assert set(statuses(url, token, N, parallel=8)) == {200}
    assert _terminate_other_backends() >= 1
    after = statuses(url, token, N, parallel=1) + statuses(url, token, N, parallel=8)
    assert after.count(500) == 0, after
    assert set(after) == {200}


def test_uvicorn_pool_serves_every_request_after_the_database_restarts(make_user, tmp_path):
    token = create_api_token(user=make_user(), now=timezone.now()).plaintext
    # asgi.py turns the pool on (DATABASE_POOL_MAX_SIZE defaults to 20 there).
    with served(uvicorn_argv("--no-access-log"), tmp_path) as server:
        _survives_a_restart(server.url, token)
    _, err = server.output()
    assert "AdminShutdown" not in err and "OperationalError" not in err, err


def test_uvicorn_gateway_bearer_calls_survive_the_database_restarting(make_user, standin, tmp_path):
    # Issue 20: a bearer gateway call is admitted and metered on the event loop's own pool
    # (codingplans.asyncsql), whose idle connections die with the restart just the same.
    user = make_user(credits_usd=50)
    install(user, "sk-restart-0001")
    token = create_api_token(user=user, now=timezone.now()).plaintext
    env = {"MINIMAX_API_BASE_URL": standin.url}
    with served(uvicorn_argv("--no-access-log"), tmp_path, env=env) as server:
        _survives_a_restart(server.url, token, _gateway_statuses)
        metered = 3 * N  # the warm-up and the two rounds after the restart
        deadline = time.monotonic() + 5
        while GatewayRequest.objects.filter(user=user).count() < metered:
            assert time.monotonic() < deadline, (
                GatewayRequest.objects.filter(user=user).count(),
                server.output()[1][-3000:],
            )
            time.sleep(0.05)
    _, err = server.output()
    assert "AdminShutdown" not in err and "OperationalError" not in err, err
    assert GatewayRequest.objects.filter(user=user).count() == metered


def test_gunicorn_persistent_connections_serve_every_request_after_the_database_restarts(
    make_user, tmp_path
):
    token = create_api_token(user=make_user(), now=timezone.now()).plaintext
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "codingplans.wsgi:application",
        "--bind",
        "127.0.0.1:{port}",
        "--workers",
        "1",
        "--threads",
        "4",
    ]
    env = {"DATABASE_POOL_MAX_SIZE": "0", "CONN_MAX_AGE": "600"}  # persistent, no pool
    with served(argv, tmp_path, env=env) as server:
        _survives_a_restart(server.url, token)
    _, err = server.output()
    assert "AdminShutdown" not in err and "OperationalError" not in err, err
