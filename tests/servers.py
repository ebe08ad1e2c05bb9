"""Real web servers in subprocesses, on the test database, for tests of what a deployment runs
(issue 13): `served(...)` starts a command line (uvicorn, gunicorn) on a free loopback port and
stops it afterwards, keeping its stdout and stderr for the test to read."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import httpx
from django.conf import settings

from codingplans.devenv import free_port


def test_database_url() -> str:
    """DATABASE_URL for the test database (settings NAME is the test database's by now)."""
    db = settings.DATABASES["default"]
    auth = quote(db["USER"] or "", safe="")
    if db["PASSWORD"]:
        auth += ":" + quote(db["PASSWORD"], safe="")
    query = {k: str(v) for k, v in (db.get("OPTIONS") or {}).items() if isinstance(v, str | int)}
    host = db["HOST"] or ""
    if host.startswith("/") or not host:
        if host:
            query["host"] = host
        if db["PORT"]:
            query["port"] = str(db["PORT"])
        netloc = f"{auth}@" if auth else ""
    else:
        netloc = f"{auth}@{host}" + (f":{db['PORT']}" if db["PORT"] else "")
    url = f"postgres://{netloc}/{quote(db['NAME'], safe='')}"
    return url + (f"?{urlencode(query)}" if query else "")


test_database_url.__test__ = False  # a helper, not a test


@dataclass
class Served:
    url: str
    process: subprocess.Popen
    stdout: Path
    stderr: Path

    def output(self) -> tuple[str, str]:
        return self.stdout.read_text(), self.stderr.read_text()


@contextlib.contextmanager
def served(
    argv: list[str],
    folder: Path,
    *,
    env: dict[str, str] | None = None,
    ready: str = "/accounts/login/",
) -> Iterator[Served]:
    """Run `argv` (with `{port}` replaced by a free port) until it answers `ready` with 200."""
    port = free_port()
    argv = [part.replace("{port}", str(port)) for part in argv]
    inherited = dict(os.environ)
    # The pytest process turns its own serving collector settings off (tests/conftest.py); a
    # server started as a deployment runs it is tuned as deployed (codingplans.collector).
    inherited.pop("SERVER_GC_THRESHOLDS", None)
    full_env = {
        **inherited,
        "DEBUG": "1",
        "PYTHONUNBUFFERED": "1",
        "DATABASE_URL": test_database_url(),
        **(env or {}),
    }
    full_env.pop("DJANGO_SETTINGS_MODULE", None)
    stdout, stderr = folder / "stdout.log", folder / "stderr.log"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            argv, cwd=settings.BASE_DIR, env=full_env, stdout=out, stderr=err
        )
    server = Served(f"http://127.0.0.1:{port}", process, stdout, stderr)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(server.url + ready, timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, "the server exited:\n" + stderr.read_text()
            assert time.monotonic() < deadline, "no answer within 30 s:\n" + stderr.read_text()
            time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def uvicorn_argv(*options: str) -> list[str]:
    """`uvicorn codingplans.asgi:application` as the Procfile runs it, with `options`."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "codingplans.asgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        *options,
    ]
