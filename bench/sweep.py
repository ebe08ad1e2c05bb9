"""Figure 2: sweep throughput, `run_billing_sweep` vs the same per-subscription transactions in
raw SQL, over N due subscriptions each.

The workload has the later issues' work in (issue 20): every renewal records its receipt
(issue 19: a CustomerEmail row in the renewal's transaction, queued for sending after the
commit), and one due subscription in TOP_UP_EVERY is short of credits with auto top-up on, so
the sweep records a top-up attempt and moves it to past_due (issue 16). The raw side writes the
same rows, one transaction per due subscription as the sweep."""

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
TOP_UP_EVERY = 20  # one due subscription in 20 is short, with auto top-up on
TARGET_RATIO = 0.85
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


def raw_sweep(conn, now) -> tuple[int, int]:
    """One transaction per due subscription (`conn` in autocommit, so each block commits on its
    own): lock (account, then the subscription, SKIP LOCKED), guarded debit, ledger entry,
    charged term, period moved on, audit event and the receipt's CustomerEmail row; or,
    short with auto top-up on, the top-up attempt, past_due and its audit event. Returns
    (renewed, past due)."""
    renewed = past_due = 0
    cursor = ("-infinity", 0)
    while True:
        rows = conn.execute(DUE_BATCH, {"now": now, "end": cursor[0], "id": cursor[1]}).fetchall()
        if not rows:
            return renewed, past_due
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
                    # Short: one top-up attempt for this due term (auto top-up on), past_due.
                    account = cur.execute(
                        """SELECT id, auto_top_up_enabled, auto_top_up_amount_micros
                           FROM billing_creditaccount WHERE user_id = %s""",
                        (uid,),
                    ).fetchone()
                    if not account[1]:
                        continue
                    cur.execute(
                        """INSERT INTO billing_topupattempt (account_id, subscription_id, due_at,
                           amount_micros, backend, status, decline_code, reference, action_url,
                           created_at) VALUES (%s, %s, %s, %s, 'simulated-approve', 'pending',
                           '', '', '', %s) ON CONFLICT DO NOTHING""",
                        (account[0], sid, start, max(account[2], price), now),
                    )
                    cur.execute(
                        """UPDATE subscriptions_subscription SET status = 'past_due',
                           grace_deadline = %s + interval '24 hours', top_up_attempted_for = %s,
                           updated_at = %s WHERE id = %s""",
                        (start, start, now, sid),
                    )
                    cur.execute(
                        """INSERT INTO adminops_auditevent (actor, subject_type, subject_id,
                           event_type, old_values, new_values, created_at)
                           VALUES ('system:sweep', 'subscriptions.subscription', %s,
                           'subscription.past_due', %s, %s, %s)""",
                        (str(sid), AUDIT_OLD, AUDIT_NEW, now),
                    )
                    past_due += 1
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
                # The receipt, recorded in the renewal's transaction (as the sweep does).
                cur.execute(
                    """INSERT INTO subscriptions_customeremail (kind, event_key, subscription_id,
                       event_at, status, created_at, attempts, last_error)
                       VALUES ('renewal_receipt', %s, %s, %s, 'pending', now(), 0, '')
                       ON CONFLICT DO NOTHING RETURNING id""",
                    (f"{sid}:{start.isoformat()}", sid, start),
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


def _seed(tag: str, n: int) -> tuple[list[int], int]:
    """n due subscriptions; every TOP_UP_EVERY-th one's account is empty with auto top-up on.
    Returns (ids, how many are short)."""
    with connect() as conn:
        ids = seed_due_subscriptions(conn, tag, n)
        short = ids[TOP_UP_EVERY - 1 :: TOP_UP_EVERY]
        conn.execute(
            """UPDATE billing_creditaccount a SET balance_micros = 0, auto_top_up_enabled = true
               FROM subscriptions_subscription s
               WHERE s.user_id = a.user_id AND s.id = ANY(%s)""",
            (short,),
        )
    return ids, len(short)


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

    raw_ids, short = _seed("sweep-r", n)
    analyze(*SWEEP_TABLES)
    # Autocommit, so each `conn.transaction()` is a real transaction committed on its own, as
    # the product's are. (Without it, the first statement opened an implicit transaction and
    # every block was only a savepoint in it: the whole raw sweep was one transaction, its
    # commit outside the clock, and it paid no per-subscription commit.)
    with connect(autocommit=True) as conn:
        (raw_renewed, raw_past_due), raw_wall, raw_cpu = _timed(
            lambda: raw_sweep(conn, timezone.now())
        )
    log(f"sweep: raw SQL renewed {raw_renewed}, {raw_past_due} past due in {raw_wall:.1f} s")

    product_ids, _ = _seed("sweep-p", n)
    analyze(*SWEEP_TABLES)
    sweep, product_wall, product_cpu = _timed(lambda: run_billing_sweep(now=timezone.now()))
    connection.close()
    renewed = int(sweep.counts.get("renewed", 0))
    past_due = int(sweep.counts.get("past_due", 0))
    log(f"sweep: run_billing_sweep renewed {renewed}, {past_due} past due in {product_wall:.1f} s")
    with connect() as conn:
        receipts, attempts = conn.execute(
            """SELECT (SELECT count(*) FROM subscriptions_customeremail
                       WHERE kind = 'renewal_receipt' AND subscription_id = ANY(%(ids)s)),
                      (SELECT count(*) FROM billing_topupattempt
                       WHERE subscription_id = ANY(%(ids)s))""",
            {"ids": product_ids},
        ).fetchone()

    with connect() as conn:
        terms = dict(
            conn.execute(
                """SELECT subscription_id, count(*) FROM subscriptions_chargedterm
                   WHERE subscription_id = ANY(%s) GROUP BY 1""",
                (product_ids + raw_ids,),
            ).fetchall()
        )
    # Throughput in due subscriptions handled (renewed or moved to past_due) per second.
    product_rate = (renewed + past_due) / product_wall
    raw_rate = (raw_renewed + raw_past_due) / raw_wall
    ratio = product_rate / raw_rate
    short_ids = set(product_ids[TOP_UP_EVERY - 1 :: TOP_UP_EVERY]) | set(
        raw_ids[TOP_UP_EVERY - 1 :: TOP_UP_EVERY]
    )
    correct = (
        renewed == n - short
        and raw_renewed == n - short
        and past_due == short
        and raw_past_due == short
        and receipts == n - short
        and attempts == short
        and all(terms.get(s) == 1 for s in product_ids + raw_ids if s not in short_ids)
        and sweep.counts.get("errors", 0) == 0
    )
    projected = 100_000 / product_rate
    SHARED["sweep_rate"] = round(product_rate, 1)
    figure = Figure(
        key="sweep",
        name=f"2. Sweep throughput ({n:,} due)",
        measured=f"{product_rate:.0f} due/s",
        baseline=f"{raw_rate:.0f}/s raw SQL",
        value=f"{ratio:.2f}",
        target=f"ratio >= {TARGET_RATIO:g}",
        met=ratio >= TARGET_RATIO and correct,
        details={
            "due_subscriptions": n,
            "renewed": renewed,
            "raw_renewed": raw_renewed,
            "past_due_with_top_up_attempt": past_due,
            "raw_past_due": raw_past_due,
            "renewal_receipts_recorded": receipts,
            "top_up_attempts_recorded": attempts,
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
            "term, period update, audit event, the receipt's CustomerEmail row, one commit; "
            f"1 in {TOP_UP_EVERY} short with auto top-up on: top-up attempt, past_due, audit "
            "event: the rows the sweep writes (it also queues the receipts and the top-up charges "
            "as Celery tasks)",
        ],
    )
    if n != 20_000:
        figure.notes.append(
            f"scaled: {n:,} due subscriptions instead of 20,000 (what the sweep clears in "
            f"~{seconds:.0f} s at the calibrated {cal_rate:.0f}/s; 10-minute budget)"
        )
    return figure
