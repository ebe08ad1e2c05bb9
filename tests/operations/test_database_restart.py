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
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from django.db import connection
from django.utils import timezone

from accounts.tokens import create_api_token
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


def _survives_a_restart(url: str, token: str) -> None:
    # Warm up: several connections in use at once, then kept (pool / persistent connections).
    assert set(_statuses(url, token, N, parallel=8)) == {200}
    assert _terminate_other_backends() >= 1
    after = _statuses(url, token, N, parallel=1) + _statuses(url, token, N, parallel=8)
    assert after.count(500) == 0, after
    assert set(after) == {200}


def test_uvicorn_pool_serves_every_request_after_the_database_restarts(make_user, tmp_path):
    token = create_api_token(user=make_user(), now=timezone.now()).plaintext
    # asgi.py turns the pool on (DATABASE_POOL_MAX_SIZE defaults to 20 there).
    with served(uvicorn_argv("--no-access-log"), tmp_path) as server:
        _survives_a_restart(server.url, token)
    _, err = server.output()
    assert "AdminShutdown" not in err and "OperationalError" not in err, err


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
