"""Figure 2: sweep throughput, `run_billing_sweep` vs the same per-subscription transactions in
raw SQL, over N due subscriptions each."""

from __future__ import annotations

import time

from bench.common import (
    SHARED,
    Figure,
    analyze,
    connect,
    log,
    seed_due_subscriptions,
    time_left,
)

CALIBRATION = 300
SWEEP_SECONDS = 180  # at most, for the product sweep (less when the budget is short)
SCALEOUT_RESERVE = 150  # seconds kept for figure 7
SWEEP_TABLES = (
    "accounts_user",
    "billing_creditaccount",
    "inventory_credential",
    "subscriptions_subscription",
)

AUDIT_OLD = '{"status": "active", "current_period_end": "2026-01-01T00:00:00+00:00"}'
AUDIT_NEW = '{"status": "active", "current_period_end": "2026-01-31T00:00:00+00:00"}'

DUE_BATCH = """
    SELECT id, current_period_end FROM subscriptions_subscription
    WHERE status IN ('active', 'past_due') AND current_period_end <= %(now)s
      AND (current_period_end, id) > (%(end)s::timestamptz, %(id)s::bigint)
    ORDER BY current_period_end, id LIMIT 1000
"""


def raw_sweep(conn, now) -> int:
    """One transaction per due subscription: lock (account, then the subscription, SKIP
    LOCKED), guarded debit, ledger entry, charged term, period moved on."""
    renewed = 0
    cursor = ("-infinity", 0)
    while True:
        rows = conn.execute(DUE_BATCH, {"now": now, "end": cursor[0], "id": cursor[1]}).fetchall()
        if not rows:
            return renewed
        for sid, end in rows:
            cursor = (end, sid)
            with conn.transaction(), conn.cursor() as cur:
                (uid,) = cur.execute(
                    "SELECT user_id FROM subscriptions_subscription WHERE id = %s", (sid,)
                ).fetchone()
                cur.execute(
                    "SELECT id FROM billing_creditaccount WHERE user_id = %s FOR UPDATE", (uid,)
                )
                sub = cur.execute(
                    """SELECT price_micros, billing_period_days, current_period_end, status
                       FROM subscriptions_subscription WHERE id = %s
                       FOR UPDATE SKIP LOCKED""",
                    (sid,),
                ).fetchone()
                if sub is None or sub[3] not in ("active", "past_due") or sub[2] > now:
                    continue
                price, days, start, _ = sub
                debit = cur.execute(
                    """UPDATE billing_creditaccount SET balance_micros = balance_micros - %s,
                       updated_at = %s WHERE user_id = %s AND balance_micros >= %s
                       RETURNING id, balance_micros""",
                    (price, now, uid, price),
                ).fetchone()
                if debit is None:
                    continue
                (entry,) = cur.execute(
                    """INSERT INTO billing_ledgerentry (kind, amount_micros,
                       balance_after_micros, reason, actor, reference, created_at, account_id)
                       VALUES ('renewal', %s, %s, 'Token Plan Plus renewal', 'system:sweep',
                       %s, %s, %s) RETURNING id""",
                    (-price, debit[1], f"subscription:{sid}", now, debit[0]),
                ).fetchone()
                cur.execute(
                    """INSERT INTO subscriptions_chargedterm (amount_micros, period_start,
                       period_end, charged_at, description, ledger_entry_id, subscription_id)
                       VALUES (%s, %s, %s + make_interval(days => %s), %s,
                       'Token Plan Plus — renewal', %s, %s)""",
                    (price, start, start, days, now, entry, sid),
                )
                cur.execute(
                    """INSERT INTO adminops_auditevent (actor, subject_type, subject_id,
                       event_type, old_values, new_values, created_at)
                       VALUES ('system:sweep', 'subscriptions.subscription', %s,
                       'subscription.renewed', %s, %s, %s)""",
                    (str(sid), AUDIT_OLD, AUDIT_NEW, now),
                )
                cur.execute(
                    """UPDATE subscriptions_subscription SET status = 'active',
                       current_period_start = current_period_end,
                       current_period_end = current_period_end + make_interval(days => %s),
                       grace_deadline = NULL, updated_at = %s WHERE id = %s""",
                    (days, now, sid),
                )
                renewed += 1


def _timed(fn):
    """(result, wall seconds, CPU seconds of this process)."""
    cpu, started = time.process_time(), time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started, time.process_time() - cpu


def sized(scale: float, rate: float, seconds: float, full: int = 20_000) -> int:
    """The issue's size (times `scale`), cut down to what `rate` clears in `seconds`."""
    wanted = int(full * scale)
    fits = int(rate * seconds) // 500 * 500
    return max(500, min(wanted, fits))


def run(scale: float, standin=None) -> Figure:
    from django.db import connection
    from django.utils import timezone

    from subscriptions.sweep import run_billing_sweep

    # Calibrate (and warm up): how fast does the sweep go on this machine right now?
    with connect() as conn:
        seed_due_subscriptions(conn, "sweep-cal", CALIBRATION)
    analyze(*SWEEP_TABLES)
    cal, cal_wall, _ = _timed(lambda: run_billing_sweep(now=timezone.now()))
    cal_rate = int(cal.counts.get("renewed", 0)) / cal_wall
    # Leave the scale-out (figure 7) its share of what is left of the budget.
    seconds = min(SWEEP_SECONDS, max(20.0, (time_left() - SCALEOUT_RESERVE) / 1.3))
    n = sized(scale, cal_rate, seconds)
    log(f"sweep: calibration {cal_rate:.0f} renewals/s -> {n} due subscriptions per side")

    with connect() as conn:
        raw_ids = seed_due_subscriptions(conn, "sweep-r", n)
    analyze(*SWEEP_TABLES)
    with connect() as conn:
        raw_renewed, raw_wall, raw_cpu = _timed(lambda: raw_sweep(conn, timezone.now()))
    log(f"sweep: raw SQL renewed {raw_renewed} in {raw_wall:.1f} s")

    with connect() as conn:
        product_ids = seed_due_subscriptions(conn, "sweep-p", n)
    analyze(*SWEEP_TABLES)
    sweep, product_wall, product_cpu = _timed(lambda: run_billing_sweep(now=timezone.now()))
    connection.close()
    renewed = int(sweep.counts.get("renewed", 0))
    log(f"sweep: run_billing_sweep renewed {renewed} in {product_wall:.1f} s")

    with connect() as conn:
        terms = dict(
            conn.execute(
                """SELECT subscription_id, count(*) FROM subscriptions_chargedterm
                   WHERE subscription_id = ANY(%s) GROUP BY 1""",
                (product_ids + raw_ids,),
            ).fetchall()
        )
    product_rate = renewed / product_wall
    raw_rate = raw_renewed / raw_wall
    ratio = product_rate / raw_rate
    correct = (
        renewed == n
        and raw_renewed == n
        and all(terms.get(s) == 1 for s in product_ids + raw_ids)
        and sweep.counts.get("errors", 0) == 0
    )
    projected = 100_000 / product_rate
    SHARED["sweep_rate"] = round(product_rate, 1)
    figure = Figure(
        key="sweep",
        name=f"2. Sweep throughput ({n:,} due)",
        measured=f"{product_rate:.0f} renewals/s",
        baseline=f"{raw_rate:.0f}/s raw SQL",
        value=f"{ratio:.2f}",
        target="ratio >= 0.5",
        met=ratio >= 0.5 and correct,
        details={
            "due_subscriptions": n,
            "renewed": renewed,
            "raw_renewed": raw_renewed,
            "product_wall_s": round(product_wall, 2),
            "raw_wall_s": round(raw_wall, 2),
            "product_per_s": round(product_rate, 1),
            "raw_sql_per_s": round(raw_rate, 1),
            "ratio": round(ratio, 3),
            "client_cpu_ms_per_renewal": round(product_cpu / max(renewed, 1) * 1000, 3),
            "raw_client_cpu_ms_per_renewal": round(raw_cpu / max(raw_renewed, 1) * 1000, 3),
            "calibration_per_s": round(cal_rate, 1),
            "projected_100k_s": round(projected, 1),
            "every_subscription_exactly_one_term": correct,
            "sweep_counts": sweep.counts,
        },
        notes=[
            f"projected time to clear 100,000 due: {projected:.0f} s "
            f"({projected / 60:.1f} min) with one sweep",
            f"client CPU per renewal: sweep {product_cpu / max(renewed, 1) * 1000:.2f} ms, "
            f"raw SQL {raw_cpu / max(raw_renewed, 1) * 1000:.2f} ms",
            "raw SQL: account lock, subscription lock (SKIP LOCKED), guarded debit, ledger, "
            "term, period update, audit event: the rows the sweep writes",
        ],
    )
    if n != 20_000:
        figure.notes.append(
            f"scaled: {n:,} due subscriptions instead of 20,000 (what the sweep clears in "
            f"~{seconds:.0f} s at the calibrated {cal_rate:.0f}/s; 10-minute budget)"
        )
    return figure
