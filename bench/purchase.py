"""Figure 1: purchase throughput, `purchase_plan` vs the same row work in raw SQL (8 workers)."""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Callable

from bench.common import (
    PLUS,
    PLUS_PRICE,
    Figure,
    analyze,
    connect,
    log,
    postgres_cpu_seconds,
    seed_credentials,
    seed_users,
)

WORKERS = 8

RAW_PURCHASE = [
    # guarded debit
    (
        "debit",
        """UPDATE billing_creditaccount SET balance_micros = balance_micros - %(price)s,
           updated_at = now() WHERE user_id = %(user)s AND balance_micros >= %(price)s
           RETURNING id, balance_micros""",
    ),
    (
        "ledger",
        """INSERT INTO billing_ledgerentry (kind, amount_micros, balance_after_micros, reason,
           actor, reference, created_at, account_id)
           VALUES ('purchase', -%(price)s, %(balance)s, 'Token Plan Plus — first 30 days',
           %(actor)s, '', now(), %(account)s) RETURNING id""",
    ),
    # The claim looks above the last id claimed first, as the service's does
    # (inventory.services.claim_cte): a scan from the index's low end walks an entry for every
    # credential sold since the last VACUUM, and the baseline should not pay for that when the
    # product does not.
    (
        "claim",
        """WITH above AS (
               SELECT id FROM inventory_credential WHERE plan_id = %(plan)s
                   AND state = 'available' AND id > %(after)s
               ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED),
           below AS (
               SELECT id FROM inventory_credential WHERE plan_id = %(plan)s
                   AND state = 'available' AND id <= %(after)s
               ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
           SELECT id FROM above UNION ALL SELECT id FROM below LIMIT 1""",
    ),
    (
        "assign",
        """UPDATE inventory_credential SET state = 'assigned', assigned_to_id = %(user)s,
           holder_ref = %(holder)s, assigned_at = now() WHERE id = %(credential)s""",
    ),
    (
        "subscription",
        """INSERT INTO subscriptions_subscription (plan_id, provider_id, status, price_micros,
           billing_period_days, current_period_start, current_period_end, cancel_at_period_end,
           created_at, updated_at, credential_id, user_id)
           VALUES (%(plan)s, 'minimax', 'active', %(price)s, 30, now(),
           now() + interval '30 days', false, now(), now(), %(credential)s, %(user)s)
           RETURNING id""",
    ),
    (
        "byok",
        """INSERT INTO byok_byokkey (provider_id, encrypted_key, key_hint, enabled, managed_by,
           created_at, updated_at, user_id, subscription_id)
           VALUES ('minimax', %(blob)s, '…0001', true, 'coding_plan', now(), now(), %(user)s,
           %(subscription)s)""",
    ),
    (
        "term",
        """INSERT INTO subscriptions_chargedterm (amount_micros, period_start, period_end,
           charged_at, description, ledger_entry_id, subscription_id)
           VALUES (%(price)s, now(), now() + interval '30 days', now(),
           'Token Plan Plus — purchase', %(entry)s, %(subscription)s)""",
    ),
    (
        "audit",
        """INSERT INTO adminops_auditevent (actor, subject_type, subject_id, event_type,
           old_values, new_values, created_at)
           VALUES (%(actor)s, %(subject_type)s, %(subject_id)s, %(event)s, %(old)s, %(new)s,
           now())""",
    ),
    (
        "idempotency",
        """INSERT INTO subscriptions_purchaserequest (idempotency_key, plan_id, response_status,
           response_body, created_at, user_id, subscription_id)
           VALUES (%(key)s, %(plan)s, 201, %(body)s, now(), %(user)s, %(subscription)s)""",
    ),
]

RAW_RECEIPT = """
    INSERT INTO subscriptions_customeremail (kind, event_key, subscription_id, event_at, status,
        created_at, attempts, last_error)
    VALUES ('purchase_receipt', %(subscription)s::text, %(subscription)s, NULL, 'pending', now(),
        0, '')
    ON CONFLICT DO NOTHING RETURNING id
"""
TARGET_RATIO = 0.8
# The last credential the raw side claimed: where its next claim looks first.
_raw_mark = [0]


def _raw_purchase(conn, user_id: int, blob: str) -> None:
    params: dict[str, object] = {
        "price": PLUS_PRICE,
        "user": user_id,
        "plan": PLUS,
        "actor": f"user:{user_id}",
        "holder": f"holder-{user_id}",
        "blob": blob,
        "key": str(uuid.uuid4()),
        "after": _raw_mark[0],
    }
    sql = dict(RAW_PURCHASE)
    with conn.transaction(), conn.cursor() as cur:
        account, balance = cur.execute(sql["debit"], params).fetchone()
        params.update(account=account, balance=balance)
        params["entry"] = cur.execute(sql["ledger"], params).fetchone()[0]
        params["credential"] = _raw_mark[0] = cur.execute(sql["claim"], params).fetchone()[0]
        cur.execute(sql["assign"], params)
        params["subscription"] = cur.execute(sql["subscription"], params).fetchone()[0]
        cur.execute(sql["byok"], params)
        cur.execute(sql["term"], params)
        for subject_type, subject_id, event, old, new in (
            (
                "subscriptions.subscription",
                params["subscription"],
                "subscription.purchased",
                "{}",
                json.dumps({"plan_id": PLUS, "status": "active"}),
            ),
            (
                "inventory.credential",
                params["credential"],
                "credential.assigned",
                '{"state": "available"}',
                '{"state": "assigned"}',
            ),
        ):
            cur.execute(
                sql["audit"],
                {
                    **params,
                    "subject_type": subject_type,
                    "subject_id": str(subject_id),
                    "event": event,
                    "old": old,
                    "new": new,
                },
            )
        params["body"] = json.dumps({"id": params["subscription"], "plan_id": PLUS})
        cur.execute(sql["idempotency"], params)
        # The purchase receipt's e-mail row, in the purchase's transaction as the service
        # writes it (issue 19; an outbox row since issue 20).
        cur.execute(RAW_RECEIPT, {"subscription": params["subscription"]})


def _run_workers(
    user_ids: list[int], make_worker: Callable[[], tuple[Callable[[int], None], Callable]]
) -> tuple[float, float, float | None]:
    """(purchases/s, client CPU seconds per purchase, server CPU seconds per purchase or None)
    over `user_ids` with WORKERS threads; each thread builds its own worker (and so its own
    database connection)."""
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for uid in user_ids:
        todo.put(uid)
    errors: list[BaseException] = []
    ready = threading.Barrier(WORKERS + 1)

    def run() -> None:
        buy, close = make_worker()
        ready.wait()
        try:
            while True:
                try:
                    uid = todo.get_nowait()
                except queue.Empty:
                    return
                buy(uid)
        except BaseException as exc:
            errors.append(exc)
        finally:
            close()

    threads = [threading.Thread(target=run) for _ in range(WORKERS)]
    for t in threads:
        t.start()
    ready.wait()
    started, cpu, server = time.perf_counter(), time.process_time(), postgres_cpu_seconds()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    server_after = postgres_cpu_seconds()
    if errors:
        raise RuntimeError(f"purchase worker failed: {errors[0]!r}") from errors[0]
    n = len(user_ids)
    server_cpu = None if server is None or server_after is None else (server_after - server) / n
    return n / wall, cpu / n, server_cpu


_USERS: dict[int, object] = {}


def _load_users(user_ids: list[int]) -> None:
    """The buyers' User objects, read before the clock starts: the raw side gets ids, and an
    HTTP request has its user from authentication (figure 3 measures that whole path)."""
    from accounts.models import User

    _USERS.update((u.pk, u) for u in User.objects.filter(pk__in=user_ids))


def _product_worker():
    from django.db import connection
    from django.utils import timezone

    from subscriptions.purchase import purchase_plan

    def buy(uid: int) -> None:
        outcome = purchase_plan(
            user=_USERS[uid], plan_id=PLUS, idempotency_key=str(uuid.uuid4()), now=timezone.now()
        )
        assert outcome.status == 201

    return buy, connection.close


def _raw_worker_factory(blob: str):
    def make():
        conn = connect()

        def buy(uid: int) -> None:
            _raw_purchase(conn, uid, blob)

        return buy, conn.close

    return make


def run(scale: float, standin=None) -> Figure:
    from bench.common import encrypted_blob

    per_round = max(WORKERS * 10, int(400 * scale))
    # Four short rounds, the side that goes first alternating: on a shared 2-core machine a
    # burst of other work then lands on both sides alike.
    rounds = 4
    warmup = WORKERS * 2
    total = per_round * rounds * 2 + warmup * 2
    blob = encrypted_blob("sk-bench-purchase-key-0001")
    with connect() as conn:
        product_users = seed_users(conn, "buy-p", per_round * rounds + warmup)
        raw_users = seed_users(conn, "buy-r", per_round * rounds + warmup)
        seed_credentials(conn, "buy-stock", total + 50, blob=blob)
    analyze("accounts_user", "billing_creditaccount", "inventory_credential", "accounts_apitoken")
    _load_users(product_users)
    log(f"purchase: {per_round} per round x {rounds} rounds x 2 sides, {WORKERS} workers")
    # Warm up both paths (connections, caches, JIT-free but imports and plan caches).
    _run_workers(product_users[:warmup], _product_worker)
    _run_workers(raw_users[:warmup], _raw_worker_factory(blob))
    product_rates, raw_rates, product_cpu, raw_cpu = [], [], [], []
    server_cpu: dict[str, list[float | None]] = {"product": [], "raw": []}
    for r in range(rounds):
        chunk = slice(warmup + r * per_round, warmup + (r + 1) * per_round)
        sides = [
            ("raw", raw_users, _raw_worker_factory(blob), raw_rates, raw_cpu),
            ("product", product_users, _product_worker, product_rates, product_cpu),
        ]
        for side, users, worker, rates, cpus in sides if r % 2 == 0 else reversed(sides):
            rate, cpu, server = _run_workers(users[chunk], worker)
            rates.append(rate)
            cpus.append(cpu)
            server_cpu[side].append(server)
        log(f"purchase round {r + 1}: raw {raw_rates[-1]:.0f}/s, product {product_rates[-1]:.0f}/s")
    product = sum(product_rates) / rounds
    raw = sum(raw_rates) / rounds
    product_cpu_ms = sum(product_cpu) / rounds * 1000
    raw_cpu_ms = sum(raw_cpu) / rounds * 1000
    ratio = product / raw
    # PostgreSQL's CPU per purchase (the embedded server's processes, from /proc; None when the
    # server runs elsewhere): with the client's, what the 2 cores are spent on.
    server_ms = {
        side: None if None in values else round(sum(values) / rounds * 1000, 3)
        for side, values in server_cpu.items()
    }
    return Figure(
        key="purchase",
        name="1. Purchase throughput (8 workers)",
        measured=f"{product:.0f} purchases/s",
        baseline=f"{raw:.0f}/s raw SQL",
        value=f"{ratio:.2f}",
        target=f"ratio >= {TARGET_RATIO:g}",
        met=ratio >= TARGET_RATIO,
        details={
            "workers": WORKERS,
            "purchases_per_side": per_round * rounds,
            "product_per_s": round(product, 1),
            "raw_sql_per_s": round(raw, 1),
            "product_rounds": [round(x, 1) for x in product_rates],
            "raw_rounds": [round(x, 1) for x in raw_rates],
            "ratio": round(ratio, 3),
            "client_cpu_ms_per_purchase": round(product_cpu_ms, 3),
            "raw_client_cpu_ms_per_purchase": round(raw_cpu_ms, 3),
            "server_cpu_ms_per_purchase": server_ms["product"],
            "raw_server_cpu_ms_per_purchase": server_ms["raw"],
        },
        notes=[
            "raw SQL: guarded debit, ledger, SKIP LOCKED claim (above the last id claimed "
            "first, as the service's) + update, subscription, BYOK, "
            "term, 2 audit events, idempotency insert, the receipt's CustomerEmail row; the "
            "service also queues the receipt (Celery, batched by the process's publisher "
            "thread), locks the account, checks the stored outcome, account, live subscription "
            "and BYOK slot, re-encrypts the key, and runs the low-stock check after commit "
            "when its claim says the plan may be near its threshold; buyers' User rows are "
            "read before the clock starts on both sides",
            f"client CPU per purchase (8 threads share one GIL): service {product_cpu_ms:.2f} ms, "
            f"raw SQL {raw_cpu_ms:.2f} ms; PostgreSQL CPU per purchase: service "
            f"{server_ms['product']} ms, raw SQL {server_ms['raw']} ms",
        ],
    )
