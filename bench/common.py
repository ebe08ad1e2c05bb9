"""Shared pieces: results, statistics, the benchmark database, seeding and server processes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlparse, urlunparse

import psycopg

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
BIN = Path(PY).parent
BENCH_DB = os.environ.get("BENCH_DATABASE_NAME", "codingplans_bench")
# Figures hand measurements to later ones here (the single-sweep rate for the scale-out).
SHARED: dict[str, Any] = {}
# The pid of the server process listening on each port (the streams figure reads /proc).
SERVER_PIDS: dict[int, int] = {}
PLUS = "minimax-token-plan-plus"
PLUS_PRICE = 20_000_000
RICH = 1_000 * 1_000_000  # $1,000: every seeded account can pay many renewals


# -- results -----------------------------------------------------------------------------------


@dataclass
class Figure:
    """One row of the table: a measured value, its baseline, and the target it is held to."""

    key: str
    name: str
    measured: str
    baseline: str = ""
    value: str = ""  # the ratio (or the single figure judged against the target)
    target: str = "report"
    met: bool | None = None  # None: reported, no target
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "name": self.name,
            "measured": self.measured,
            "baseline": self.baseline,
            "value": self.value,
            "target": self.target,
            "met": self.met,
            "details": self.details,
            "notes": self.notes,
        }


def time_left() -> float:
    """Seconds left of the run's budget (set by __main__; plenty when run piecemeal)."""
    return SHARED.get("deadline", time.monotonic() + 3600) - time.monotonic()


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0–100), nearest-rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int | str) -> tuple[str, list[str]]:
    """(command name, the fields after it) of /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        head, _, rest = f.read().rpartition(")")
    return head.split("(", 1)[-1], rest.split()


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = _stat(pid)[1]
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK  # utime, stime


def postgres_cpu_seconds() -> float | None:
    """CPU seconds used so far by the PostgreSQL server on this machine (the embedded one):
    every postgres process's own, plus what the postmaster's exited backends used (its
    children's times), from /proc; None where no postgres process is visible (a server
    elsewhere)."""
    total, seen = 0.0, False
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            name, fields = _stat(entry.name)
        except OSError:
            continue
        if name.startswith("postgres"):
            total += sum(int(v) for v in fields[11:15]) / CLOCK_TICK  # + cutime, cstime
            seen = True
    return total if seen else None


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


# -- the benchmark database --------------------------------------------------------------------


def server_url() -> str:
    url = os.environ.get("DATABASE_URL", "")
    if not url:
        raise SystemExit("bench: DATABASE_URL is not set (run through `make bench`)")
    return url


def with_db_name(url: str, name: str) -> str:
    parsed = urlparse(url)
    return urlunparse(parsed._replace(path="/" + quote(name)))


def conninfo(url: str) -> dict[str, Any]:
    """psycopg keywords for a DATABASE_URL, read as codingplans.settings reads it (which must not
    be imported before the URL points at the benchmark database)."""
    parsed = urlparse(url)
    query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    host = query.pop("host", None) or unquote(parsed.hostname or "")
    socket_host = "%2f" in parsed.netloc.lower()
    if socket_host:
        host = unquote(parsed.netloc.rsplit("@", 1)[-1])
    info: dict[str, Any] = {
        "dbname": unquote(parsed.path.lstrip("/")) or "postgres",
        "user": unquote(parsed.username or "") or None,
        "password": unquote(parsed.password or "") or None,
        "host": host or None,
        "port": None if socket_host else parsed.port,
        **query,
    }
    return {k: v for k, v in info.items() if v is not None}


def recreate_database(url: str, name: str) -> str:
    """Drop and create `name` on the server of `url`; returns the URL of the new database."""
    admin = conninfo(with_db_name(url, "postgres"))
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return with_db_name(url, name)


def drop_database(url: str, name: str) -> None:
    admin = conninfo(with_db_name(url, "postgres"))
    with contextlib.suppress(psycopg.Error), psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def connect(**kwargs: Any) -> psycopg.Connection:
    """A psycopg connection to the benchmark database (DATABASE_URL once set up)."""
    return psycopg.connect(**conninfo(os.environ["DATABASE_URL"]), **kwargs)


def analyze(*tables: str) -> None:
    with connect(autocommit=True) as conn:
        for table in tables:
            conn.execute(f"VACUUM ANALYZE {table}")


def settle() -> float:
    """Vacuum and checkpoint the benchmark database before a figure, so that one figure's
    leftovers (autovacuum of the rows it wrote, a checkpoint flushing them) are not measured
    as part of the next one on a machine whose cores PostgreSQL shares. Returns the seconds
    it took."""
    started = time.perf_counter()
    with connect(autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        with contextlib.suppress(psycopg.Error):  # CHECKPOINT needs pg_checkpoint or superuser
            conn.execute("CHECKPOINT")
    return time.perf_counter() - started


# -- seeding with set-based SQL (fast: tens of thousands of rows in a second or two) ------------


def encrypted_blob(plaintext: str) -> str:
    from codingplans import crypto

    return crypto.encrypt(plaintext)


def seed_users(conn: psycopg.Connection, tag: str, n: int, *, balance: int = RICH) -> list[int]:
    """n active, verified customers tagged `tag` (in full_name), each with a credit account (and
    the renewal reminder on, the default); ids in order."""
    rows = conn.execute(
        """
        INSERT INTO accounts_user
            (password, is_superuser, email, full_name, is_active, is_staff, date_joined,
             email_verified_at, renewal_reminders)
        SELECT '!', false, 'bench-' || %(tag)s || '-' || g || '@example.com', %(tag)s, true,
               false, now(), now(), true
        FROM generate_series(1, %(n)s) g
        RETURNING id
        """,
        {"tag": tag, "n": n},
    ).fetchall()
    ids = sorted(r[0] for r in rows)
    conn.execute(
        """
        INSERT INTO billing_creditaccount
            (balance_micros, auto_top_up_enabled, auto_top_up_amount_micros, created_at,
             updated_at, user_id)
        SELECT %(balance)s, false, 20000000, now(), now(), id FROM unnest(%(ids)s::bigint[]) id
        """,
        {"balance": balance, "ids": ids},
    )
    return ids


def seed_credentials(
    conn: psycopg.Connection,
    tag: str,
    n: int,
    *,
    plan_id: str = PLUS,
    state: str = "available",
    blob: str | None = None,
    user_ids: list[int] | None = None,
) -> list[int]:
    """n credentials tagged `tag` (in upstream_plan_id). With `user_ids`, credential i is
    assigned to user i. Every row carries the same valid ciphertext (`blob`)."""
    blob = blob or encrypted_blob(f"sk-bench-{tag}-key-0001")
    requested = "now()" if state in ("revocation_pending", "revocation_failed") else "NULL"
    encrypted = "''" if state in ("revocation_pending", "revocation_failed") else "%(blob)s"
    if user_ids is not None:
        source = "unnest(%(users)s::bigint[]) WITH ORDINALITY AS u(id, g)"
        assigned = "u.id"
        assigned_at = "now()"
    else:
        source = "generate_series(1, %(n)s) AS g"
        assigned = "NULL"
        assigned_at = "NULL"
    rows = conn.execute(
        f"""
        INSERT INTO inventory_credential
            (plan_id, state, encrypted_key, fingerprint, upstream_plan_id, holder_ref, created_at,
             assigned_at, revocation_requested_at, revocation_attempts, failure_note,
             health_note, assigned_to_id)
        SELECT %(plan)s, %(state)s, {encrypted},
               md5('bench-' || %(tag)s || '-' || g) || md5(%(tag)s || '-' || g),
               'bench-' || %(tag)s, '', now(), {assigned_at}, {requested}, 0, '', '', {assigned}
        FROM {source}
        RETURNING id
        """,
        {"plan": plan_id, "state": state, "blob": blob, "tag": tag, "n": n, "users": user_ids},
    ).fetchall()
    return sorted(r[0] for r in rows)


def seed_due_subscriptions(
    conn: psycopg.Connection, tag: str, n: int, *, overdue_hours: float = 1
) -> list[int]:
    """n active Plus subscriptions, each its own customer and credential, due `overdue_hours`
    ago: what a sweep renews."""
    users = seed_users(conn, tag, n)
    credentials = seed_credentials(conn, tag, n, state="assigned", user_ids=users)
    rows = conn.execute(
        """
        INSERT INTO subscriptions_subscription
            (plan_id, provider_id, status, price_micros, billing_period_days,
             current_period_start, current_period_end, cancel_at_period_end, created_at,
             updated_at, credential_id, user_id)
        SELECT %(plan)s, 'minimax', 'active', %(price)s, 30,
               now() - make_interval(days => 30, secs => %(secs)s + g),
               now() - make_interval(secs => %(secs)s + g), false,
               now() - make_interval(days => 30, secs => %(secs)s + g), now(), c.id, u.id
        FROM unnest(%(users)s::bigint[], %(creds)s::bigint[]) WITH ORDINALITY AS x(uid, cid, g)
        JOIN accounts_user u ON u.id = x.uid
        JOIN inventory_credential c ON c.id = x.cid
        RETURNING id
        """,
        {
            "plan": PLUS,
            "price": PLUS_PRICE,
            "secs": overdue_hours * 3600,
            "users": users,
            "creds": credentials,
        },
    ).fetchall()
    return sorted(r[0] for r in rows)


def seed_tokens(conn: psycopg.Connection, user_ids: list[int], tag: str) -> list[str]:
    """One personal API token per user (marked used just now, so no first-use write)."""
    import secrets

    from accounts.tokens import TOKEN_PREFIX, hash_token

    tokens = [TOKEN_PREFIX + secrets.token_urlsafe(32) for _ in user_ids]
    with conn.cursor() as cur:
        cur.executemany(
            """
            INSERT INTO accounts_apitoken
                (name, prefix, token_hash, created_at, last_used_at, user_id)
            VALUES (%s, %s, %s, now(), now(), %s)
            """,
            [
                (f"bench {tag}", t[:10], hash_token(t), uid)
                for t, uid in zip(tokens, user_ids, strict=True)
            ],
        )
    return tokens


def refresh_tokens(conn: psycopg.Connection, tag: str) -> None:
    """Keep the tokens within their last-used window, so requests measure the endpoint rather
    than the once-a-minute last-used write."""
    conn.execute(
        "UPDATE accounts_apitoken SET last_used_at = now() WHERE name = %s", (f"bench {tag}",)
    )


# -- server processes --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(**extra: str) -> dict[str, str]:
    """Production-like settings for the web, gateway and sweep processes: DEBUG off, with the
    development secrets handed over explicitly, on loopback only."""
    from django.conf import settings

    env = os.environ.copy()
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "codingplans.settings",
            "DEBUG": "0",
            "SECRET_KEY": settings.SECRET_KEY,
            "CODING_PLANS_ENCRYPTION_KEYS": ",".join(settings.CODING_PLANS_ENCRYPTION_KEYS),
            "CODING_PLANS_FINGERPRINT_KEY": settings.CODING_PLANS_FINGERPRINT_KEY,
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "MINIMAX_API_BASE_URL": settings.MINIMAX_API_BASE_URL,
            "PURCHASE_RATE_LIMIT_PER_MINUTE": "1000000",
            "GATEWAY_RATE_LIMIT_PER_MINUTE": "1000000",
            "GATEWAY_RATE_LIMIT_PER_USER_PER_MINUTE": "1000000",
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not start within {timeout} s")


@contextlib.contextmanager
def server_process(argv: list[str], port: int, env: dict[str, str]) -> Iterator[str]:
    """Start a server listening on 127.0.0.1:port, yield its base URL, stop it by its pid."""
    logfile = open(os.devnull, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        argv, env=env, cwd=ROOT, stdout=logfile, stderr=subprocess.PIPE, start_new_session=True
    )
    SERVER_PIDS[port] = proc.pid
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    except RuntimeError:
        tail = b"".join(errors)[-3000:].decode(errors="replace")
        log(f"server {argv[:2]} failed:\n{tail}")
        raise
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        logfile.close()


def gunicorn(port: int, env: dict[str, str], workers: int = 2):
    return server_process(
        [
            str(BIN / "gunicorn"),
            "codingplans.wsgi:application",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--log-level",
            "warning",
        ],
        port,
        env,
    )


def uvicorn(port: int, env: dict[str, str], workers: int = 1):
    argv = [
        str(BIN / "uvicorn"),
        "codingplans.asgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    if workers > 1:
        argv += ["--workers", str(workers)]
    return server_process(argv, port, env)


# -- load generation ---------------------------------------------------------------------------


@dataclass
class Load:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    wall: float = 0.0

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.ok / self.wall if self.wall else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.ok + self.errors,
            "ok": self.ok,
            "errors": self.errors,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "wall_s": round(self.wall, 3),
            "rate_per_s": round(self.rate, 1),
            "p50_ms": round(pct(self.latencies, 50) * 1000, 2),
            "p99_ms": round(pct(self.latencies, 99) * 1000, 2),
        }


def drive(
    request: Callable[[Any, int], int],
    *,
    threads: int,
    duration: float | None = None,
    count: int | None = None,
    make_client: Callable[[], Any],
    ok_status: tuple[int, ...] = (200,),
    stop: threading.Event | None = None,
    pause: float = 0.0,
) -> Load:
    """Call `request(client, i)` (returns the HTTP status) from `threads` threads until
    `duration` seconds have passed, `count` calls were made or `stop` is set; i counts calls
    across threads."""
    load = Load()
    lock = threading.Lock()
    counter = iter(range(count if count is not None else 10**12))
    stop_at = [0.0]

    def worker() -> None:
        client = make_client()
        try:
            while time.monotonic() < stop_at[0] and not (stop and stop.is_set()):
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                if pause:
                    time.sleep(pause)  # paced load: the pause is not part of the latency
                started = time.perf_counter()
                try:
                    status = request(client, i)
                except Exception:
                    status = -1
                elapsed = time.perf_counter() - started
                with lock:
                    load.statuses[status] = load.statuses.get(status, 0) + 1
                    if status in ok_status:
                        load.latencies.append(elapsed)
                    else:
                        load.errors += 1
        finally:
            with contextlib.suppress(Exception):
                client.close()

    stop_at[0] = time.monotonic() + (duration if duration is not None else 10**9)
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    started = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    load.wall = time.perf_counter() - started
    return load
