"""Figure 5: pages. Query counts and render times of the Subscription Center, a detail page, the
admin inventory list and the revocation queue, first with a few rows (the baseline), then with
the issue's sizes: the query count must not grow with rows, and stay at or below 12."""

from __future__ import annotations

import time

from bench.common import (
    PLUS,
    PLUS_PRICE,
    Figure,
    analyze,
    connect,
    log,
    median,
    seed_credentials,
    seed_users,
)

MAX_QUERIES = 12
RENDERS = 10


def _seed_customer(conn) -> tuple[int, int]:
    """A customer with one live Plus subscription (and its credential)."""
    (uid,) = seed_users(conn, "page-customer", 1)
    (cid,) = seed_credentials(conn, "page-live", 1, state="assigned", user_ids=[uid])
    (sid,) = conn.execute(
        """INSERT INTO subscriptions_subscription (plan_id, provider_id, status, price_micros,
           billing_period_days, current_period_start, current_period_end, cancel_at_period_end,
           created_at, updated_at, credential_id, user_id)
           VALUES (%s, 'minimax', 'active', %s, 30, now() - interval '1 day',
           now() + interval '29 days', false, now(), now(), %s, %s) RETURNING id""",
        (PLUS, PLUS_PRICE, cid, uid),
    ).fetchone()
    return uid, sid


def _add_terms(conn, uid: int, sid: int, n: int, offset: int) -> None:
    """n charged terms (with their ledger entries), 30-day periods going back in time."""
    conn.execute(
        """
        WITH entries AS (
            INSERT INTO billing_ledgerentry (kind, amount_micros, balance_after_micros, reason,
                actor, reference, created_at, account_id)
            SELECT 'renewal', -%(price)s, 0, 'Token Plan Plus renewal', 'system:sweep',
                   'subscription:' || %(sid)s, now() - make_interval(days => 30 * g), a.id
            FROM generate_series(%(first)s::int, %(last)s::int) g
            JOIN billing_creditaccount a ON a.user_id = %(uid)s
            RETURNING id, created_at
        )
        INSERT INTO subscriptions_chargedterm (amount_micros, period_start, period_end,
            charged_at, description, ledger_entry_id, subscription_id)
        SELECT %(price)s, e.created_at, e.created_at + interval '30 days', e.created_at,
               'Token Plan Plus — renewal', e.id, %(sid)s
        FROM entries e
        """,
        {"price": PLUS_PRICE, "sid": sid, "uid": uid, "first": offset + 1, "last": offset + n},
    )


def _add_ended_subscriptions(conn, uid: int, n: int, tag: str) -> None:
    credentials = seed_credentials(conn, tag, n, state="revoked", user_ids=[uid] * n)
    conn.execute(
        """INSERT INTO subscriptions_subscription (plan_id, provider_id, status, price_micros,
           billing_period_days, current_period_start, current_period_end, cancel_at_period_end,
           canceled_at, cancellation_reason, created_at, updated_at, credential_id, user_id)
           SELECT %s, 'minimax', 'canceled', %s, 30, now() - interval '400 days',
           now() - interval '370 days', false, now() - interval '370 days', 'user_requested',
           now() - interval '400 days', now(), c, %s FROM unnest(%s::bigint[]) c""",
        (PLUS, PLUS_PRICE, uid, credentials),
    )


def _measure(client, url: str) -> tuple[int, float]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    response = client.get(url)  # warm: caches (quota, templates) as a browsing user has them
    assert response.status_code == 200, (url, response.status_code)
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
    queries = len(ctx.captured_queries)  # now: the next request resets the query log
    assert response.status_code == 200, (url, response.status_code)
    times = []
    for _ in range(RENDERS):
        started = time.perf_counter()
        client.get(url)
        times.append(time.perf_counter() - started)
    return queries, median(times)


def run(scale: float, standin=None) -> list[Figure]:
    from django.test import Client
    from django.urls import NoReverseMatch, reverse

    from accounts.models import User

    terms = max(50, int(500 * scale))
    credentials = max(1_000, int(10_000 * scale))
    queue = max(200, int(1_000 * scale))
    ended = max(20, int(100 * scale))

    with connect() as conn:
        uid, sid = _seed_customer(conn)
        _add_terms(conn, uid, sid, 5, 0)
        (staff_id,) = seed_users(conn, "page-staff", 1)
        conn.execute(
            "UPDATE accounts_user SET is_staff = true, is_superuser = true WHERE id = %s",
            (staff_id,),
        )
        seed_credentials(conn, "page-queue-small", 10, state="revocation_pending")
        seed_credentials(conn, "page-stock-small", 100)
    analyze("inventory_credential", "subscriptions_chargedterm", "subscriptions_subscription")

    customer = Client()
    customer.force_login(User.objects.get(pk=uid))
    staff = Client()
    staff.force_login(User.objects.get(pk=staff_id))

    pages: list[tuple[str, str, Client, str]] = [
        ("center", "Subscription Center", customer, reverse("subscriptions") + "?show=all"),
        ("detail", "detail page", customer, reverse("coding-plan-detail", args=[sid])),
        (
            "changelist",
            "admin inventory list",
            staff,
            reverse("admin:inventory_credential_changelist"),
        ),
    ]
    try:
        queue_url = reverse("admin:inventory_credential_revocation_queue")
    except NoReverseMatch:
        queue_url = None
    if queue_url:
        pages.append(("queue", "revocation queue", staff, queue_url))

    small = {key: _measure(client, url) for key, _, client, url in pages}
    log(f"pages (few rows): {small}")

    with connect() as conn:
        _add_terms(conn, uid, sid, terms - 5, 5)
        _add_ended_subscriptions(conn, uid, ended, "page-ended")
        (existing,) = conn.execute("SELECT count(*) FROM inventory_credential").fetchone()
        seed_credentials(conn, "page-queue-large", queue - 10, state="revocation_pending")
        seed_credentials(conn, "page-stock-large", max(0, credentials - existing - queue + 10))
        (total_credentials,) = conn.execute("SELECT count(*) FROM inventory_credential").fetchone()
        (queue_size,) = conn.execute(
            """SELECT count(*) FROM inventory_credential
               WHERE state IN ('revocation_pending', 'revocation_failed')"""
        ).fetchone()
    analyze("inventory_credential", "subscriptions_chargedterm", "subscriptions_subscription")
    large = {key: _measure(client, url) for key, _, client, url in pages}
    log(f"pages (full size): {large}")

    sizes = {
        "center": f"1 live + {ended} ended subscriptions",
        "detail": f"{terms} charged terms",
        "changelist": f"{total_credentials:,} credentials",
        "queue": f"{queue_size:,} items",
    }
    figures = []
    for letter, (key, label, _, url) in zip("abcd", pages, strict=False):
        (q_small, t_small), (q_large, t_large) = small[key], large[key]
        met = q_large <= MAX_QUERIES and q_large <= q_small
        figures.append(
            Figure(
                key=f"pages.{key}",
                name=f"5{letter}. {label} ({sizes[key]})",
                measured=f"{q_large} queries, {t_large * 1000:.1f} ms",
                baseline=f"{q_small} q, {t_small * 1000:.1f} ms (few rows)",
                value=f"{q_large - q_small:+d} queries, x{t_large / t_small:.2f} time",
                target=f"<= {MAX_QUERIES} queries, no growth",
                met=met,
                details={
                    "url": url,
                    "size": sizes[key],
                    "queries": q_large,
                    "queries_few_rows": q_small,
                    "render_ms": round(t_large * 1000, 2),
                    "render_ms_few_rows": round(t_small * 1000, 2),
                },
            )
        )
    if queue_url is None:
        figures.append(
            Figure(
                key="pages.queue",
                name="5d. revocation queue",
                measured="not available (no admin:inventory_credential_revocation_queue URL)",
                met=None,
            )
        )
    if scale != 1:
        figures[0].notes.append(
            f"scaled: {terms} terms, {total_credentials:,} credentials, {queue_size:,} queue items"
        )
    return figures
