"""Figure 7: scale-out. Two web processes serve traffic while two sweeps (two
`manage.py run_billing_sweep` processes, no Celery) are started at once over N due
subscriptions, against one PostgreSQL and one Redis: the combined renewal rate, and no
subscription renewed twice."""

from __future__ import annotations

import json
import subprocess
import threading
import time

import httpx

from bench.common import (
    PY,
    ROOT,
    SHARED,
    Figure,
    analyze,
    connect,
    drive,
    free_port,
    log,
    refresh_tokens,
    seed_due_subscriptions,
    seed_tokens,
    seed_users,
    server_env,
    time_left,
    uvicorn,
)
from bench.sweep import SWEEP_TABLES, sized

SWEEPS = 2
SCALEOUT_SECONDS = 100  # at most, at one sweep's rate (less when the budget is short)
SWEEP_TIME_BUDGET = 240  # each sweep stops by then, whatever is left (counted as missed)
WEB_THREADS = 2
WEB_RATE = 20.0


def run(scale: float, standin=None) -> Figure:
    # As many as one sweep would clear in SCALEOUT_SECONDS at figure 2's rate (two should
    # take less), up to the 20,000.
    seconds = min(SCALEOUT_SECONDS, max(15.0, (time_left() - 30) / 1.6))
    n = sized(scale, SHARED.get("sweep_rate", 100.0), seconds)
    log(f"scale-out: seeding {n} due subscriptions")
    with connect() as conn:
        due = seed_due_subscriptions(conn, "scale", n)
        readers = seed_users(conn, "scale-web", 20)
        tokens = seed_tokens(conn, readers, "scale-web")
    analyze(*SWEEP_TABLES, "accounts_apitoken")

    env = server_env(CONN_MAX_AGE="0")
    ports = [free_port(), free_port()]
    with uvicorn(ports[0], env) as web_a, uvicorn(ports[1], env) as web_b:
        urls = [f"{web_a}/api/v1/credits", f"{web_b}/api/v1/credits"]

        def read(client: httpx.Client, i: int) -> int:
            headers = {"Authorization": f"Bearer {tokens[i % len(tokens)]}"}
            return client.get(urls[i % 2], headers=headers).status_code

        def client() -> httpx.Client:
            return httpx.Client(timeout=30, trust_env=False)

        drive(read, threads=2, count=20, make_client=client)
        with connect(autocommit=True) as conn:
            refresh_tokens(conn, "scale-web")
        stop = threading.Event()
        web: dict[str, object] = {}
        web_thread = threading.Thread(
            target=lambda: web.update(
                # Steady customer traffic (about WEB_RATE requests/s in all), not a flood that
                # would take the two cores from the sweeps.
                load=drive(
                    read,
                    threads=WEB_THREADS,
                    duration=3600,
                    make_client=client,
                    stop=stop,
                    pause=WEB_THREADS / WEB_RATE,
                )
            )
        )
        web_thread.start()
        started = time.perf_counter()
        sweeps = [
            subprocess.Popen(
                [PY, "manage.py", "run_billing_sweep", "--time-budget", str(SWEEP_TIME_BUDGET)],
                cwd=ROOT,
                env=server_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for _ in range(SWEEPS)
        ]
        outputs = [p.communicate(timeout=900) for p in sweeps]
        wall = time.perf_counter() - started
        stop.set()
        web_thread.join()
    load = web["load"]

    counts = []
    for proc, (out, err) in zip(sweeps, outputs, strict=True):
        if proc.returncode != 0:
            raise RuntimeError(f"sweep exited {proc.returncode}: {err.decode()[-2000:]}")
        counts.append(json.loads(out.decode().strip().splitlines()[-1]))
    with connect() as conn:
        per_sub = dict(
            conn.execute(
                """SELECT s, count(t.id) FROM unnest(%s::bigint[]) s
                   LEFT JOIN subscriptions_chargedterm t ON t.subscription_id = s GROUP BY s""",
                (due,),
            ).fetchall()
        )
    double = sum(1 for c in per_sub.values() if c > 1)
    missed = sum(1 for c in per_sub.values() if c == 0)
    renewed = sum(int(c.get("renewed", 0)) for c in counts)
    rate = renewed / wall
    single = SHARED.get("sweep_rate")
    ratio = f"x{rate / single:.2f} of one sweep" if single else "n/a (figure 2 not run)"
    figure = Figure(
        key="scaleout",
        name=f"7. Scale-out: 2 web + {SWEEPS} sweeps ({n:,} due)",
        measured=f"{rate:.0f} renewals/s combined, {double} double, {missed} missed",
        baseline=f"{single:.0f}/s one sweep" if single else "",
        value=ratio,
        target="0 double renewals, 0 missed",
        met=double == 0 and missed == 0 and renewed == n,
        details={
            "due_subscriptions": n,
            "wall_s": round(wall, 2),
            "renewed_total": renewed,
            "per_sweep_counts": counts,
            "combined_per_s": round(rate, 1),
            "single_sweep_per_s": single,
            "double_renewals": double,
            "missed": missed,
            "web_during_sweeps": load.summary(),
        },
        notes=[
            f"scale-out: web (2 uvicorn processes, GET /api/v1/credits, ~{WEB_RATE:g} req/s) "
            f"during the sweeps: {load.rate:.0f} req/s, p99 {load.summary()['p99_ms']:.1f} ms, "
            f"{load.errors} errors"
        ],
    )
    if n != 20_000:
        figure.notes.append(
            f"scaled: {n:,} due subscriptions instead of 20,000 (what one sweep clears in "
            f"~{seconds:.0f} s at figure 2's rate; 10-minute budget)"
        )
    return figure
