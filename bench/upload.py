"""Figure 4: upload 1,000 credentials against the stand-in answering each call in 200 ms, 10 at a
time. The ideal is 1,000 / 10 x 200 ms = 20 s; the upload may take at most 1.25 x that."""

from __future__ import annotations

import time
import uuid

from bench.common import PLUS, Figure, log

LATENCY_MS = 200
CONCURRENCY = 10


def run(scale: float, standin) -> Figure:
    from django.db import connection
    from django.utils import timezone

    from inventory.models import Credential
    from inventory.upload import upload_credentials

    n = max(100, int(1_000 * scale))
    ideal = n / CONCURRENCY * LATENCY_MS / 1000
    batch = uuid.uuid4().hex[:8]
    text = "\n".join(f"sk-bench-upload-{batch}-{i:05d}::up-bench-{batch}-{i}" for i in range(n))
    standin.state.reset()
    standin.state.latency_ms = LATENCY_MS
    log(f"upload: {n} credentials, {LATENCY_MS} ms each, concurrency {CONCURRENCY}")
    try:
        started = time.perf_counter()
        report = upload_credentials(
            plan_id=PLUS,
            text=text,
            actor="system:bench",
            now=timezone.now(),
            concurrency=CONCURRENCY,
        )
        wall = time.perf_counter() - started
    finally:
        max_in_flight = standin.state.max_in_flight
        standin.state.reset()
    stored = Credential.objects.filter(upstream_plan_id__startswith=f"up-bench-{batch}-").count()
    connection.close()
    ratio = wall / ideal
    ok = report.ok and report.stored == n and stored == n
    figure = Figure(
        key="upload",
        name=f"4. Upload {n:,} credentials (200 ms, x{CONCURRENCY})",
        measured=f"{wall:.1f} s",
        baseline=f"{ideal:.0f} s ideal",
        value=f"x{ratio:.2f}",
        target="<= x1.25",
        met=ratio <= 1.25 and ok,
        details={
            "credentials": n,
            "latency_ms": LATENCY_MS,
            "concurrency": CONCURRENCY,
            "wall_s": round(wall, 2),
            "ideal_s": round(ideal, 2),
            "ratio": round(ratio, 3),
            "stored": stored,
            "max_in_flight_at_standin": max_in_flight,
            "report_errors": report.errors[:5],
        },
    )
    if n != 1_000:
        figure.notes.append(f"scaled: {n} credentials instead of 1,000")
    return figure
