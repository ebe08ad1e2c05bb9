"""Figure 3: `POST /api/v1/coding-plans/purchases` under gunicorn (2 sync workers) on loopback,
vs `GET /api/v1/credits` (authenticated, reads one row), driven by client threads."""

from __future__ import annotations

import uuid

import httpx

from bench.common import (
    PLUS,
    Figure,
    analyze,
    connect,
    drive,
    free_port,
    gunicorn,
    log,
    refresh_tokens,
    seed_credentials,
    seed_tokens,
    seed_users,
    server_env,
)

CLIENT_THREADS = 4
SECONDS = 8.0


def _client() -> httpx.Client:
    return httpx.Client(timeout=30, trust_env=False)


def run(scale: float, standin=None) -> Figure:
    buyers_n = max(300, int(3_000 * scale))
    seconds = max(3.0, SECONDS * min(1.0, scale))
    with connect() as conn:
        readers = seed_users(conn, "http-read", 50)
        buyers = seed_users(conn, "http-buy", buyers_n)
        read_tokens = seed_tokens(conn, readers, "http-read")
        buy_tokens = seed_tokens(conn, buyers, "http-buy")
        seed_credentials(conn, "http-stock", buyers_n + 10)
    analyze("accounts_user", "accounts_apitoken", "billing_creditaccount", "inventory_credential")

    port = free_port()
    env = server_env(CONN_MAX_AGE="60")
    with gunicorn(port, env, workers=2) as base:
        credits_url = f"{base}/api/v1/credits"
        purchase_url = f"{base}/api/v1/coding-plans/purchases"

        def read(client: httpx.Client, i: int) -> int:
            token = read_tokens[i % len(read_tokens)]
            return client.get(credits_url, headers={"Authorization": f"Bearer {token}"}).status_code

        def buy(client: httpx.Client, i: int) -> int:
            return client.post(
                purchase_url,
                json={"plan_id": PLUS},
                headers={
                    "Authorization": f"Bearer {buy_tokens[i]}",
                    "Idempotency-Key": str(uuid.uuid4()),
                },
            ).status_code

        warm = 2 * CLIENT_THREADS
        drive(read, threads=CLIENT_THREADS, count=warm * 4, make_client=_client)
        drive(buy, threads=CLIENT_THREADS, count=warm, make_client=_client, ok_status=(201,))
        with connect(autocommit=True) as conn:
            refresh_tokens(conn, "http-read")
            refresh_tokens(conn, "http-buy")

        reads = drive(read, threads=CLIENT_THREADS, duration=seconds, make_client=_client)
        log(f"http: GET credits {reads.summary()}")
        offset = warm

        def buy_fresh(client: httpx.Client, i: int) -> int:
            return buy(client, i + offset)

        buys = drive(
            buy_fresh,
            threads=CLIENT_THREADS,
            duration=seconds,
            count=buyers_n - offset,
            make_client=_client,
            ok_status=(201,),
        )
        log(f"http: POST purchases {buys.summary()}")
    ratio = buys.rate / reads.rate if reads.rate else 0.0
    figure = Figure(
        key="http",
        name="3. HTTP purchase vs credits read (gunicorn x2)",
        measured=(
            f"{buys.rate:.0f} req/s, p50 {buys.summary()['p50_ms']:.1f} / "
            f"p99 {buys.summary()['p99_ms']:.1f} ms"
        ),
        baseline=(
            f"{reads.rate:.0f} req/s, p50 {reads.summary()['p50_ms']:.1f} / "
            f"p99 {reads.summary()['p99_ms']:.1f} ms"
        ),
        value=f"{ratio:.2f}",
        target="report; 0 errors",
        met=buys.errors == 0 and reads.errors == 0,
        details={
            "server": "gunicorn codingplans.wsgi, 2 sync workers, DEBUG off, CONN_MAX_AGE=60",
            "client_threads": CLIENT_THREADS,
            "seconds_per_endpoint": seconds,
            "purchase": buys.summary(),
            "credits": reads.summary(),
            "throughput_ratio": round(ratio, 3),
        },
        notes=[
            f"HTTP: {CLIENT_THREADS} client threads (httpx) for {seconds:g} s per endpoint; "
            "purchases each by a different customer; ratio = purchase req/s / credits req/s"
        ],
    )
    if buys.ok + buys.errors >= buyers_n - offset:
        figure.notes.append("purchases ran out of seeded customers before the time was up")
    return figure
