"""Concurrent debits on real PostgreSQL with real threads (SPEC P4; DESIGN "Transactions").

Each thread has its own database connection and commits for real, so these tests use
`transaction=True` and close their connections when done.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

import pytest
from django.db import connection, transaction
from django.db.models import Sum
from django.utils import timezone

from billing.errors import InsufficientCredits
from billing.models import CreditAccount, LedgerEntry
from billing.services import grant_credits, post_entry

pytestmark = pytest.mark.django_db(transaction=True)

MICROS = 1_000_000


def run_together(workers: list[Callable[[], str]]) -> list[str]:
    """Start every worker at the same instant (a barrier); each closes its own DB connection."""
    barrier = threading.Barrier(len(workers))
    results: list[str] = [""] * len(workers)

    def run(i: int, work: Callable[[], str]) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = work()
        except Exception as exc:  # reported by the assertions below
            results[i] = f"error: {exc!r}"
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, w)) for i, w in enumerate(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    return results


def debit_worker(user, amount_micros: int) -> Callable[[], str]:
    def work() -> str:
        try:
            with transaction.atomic():
                post_entry(
                    user=user,
                    amount_micros=-amount_micros,
                    kind=LedgerEntry.Kind.PURCHASE,
                    actor="system:test",
                    now=timezone.now(),
                )
        except InsufficientCredits:
            return "insufficient"
        return "ok"

    return work


def grant_worker(user, amount_micros: int) -> Callable[[], str]:
    def work() -> str:
        grant_credits(
            user=user, amount_micros=amount_micros, actor="system:test", now=timezone.now()
        )
        return "granted"

    return work


def assert_ledger_conserved(user) -> int:
    """SPEC P4: balance == Σ entries, >= 0, and every balance_after is the running sum by id."""
    account = CreditAccount.objects.get(user=user)
    entries = list(LedgerEntry.objects.filter(account=account).order_by("id"))
    running = 0
    for entry in entries:
        running += entry.amount_micros
        assert entry.balance_after_micros == running, "entries were applied out of order"
        assert running >= 0
    total = LedgerEntry.objects.filter(account=account).aggregate(t=Sum("amount_micros"))["t"]
    assert account.balance_micros == total == running
    assert account.balance_micros >= 0
    return account.balance_micros


def test_concurrent_debits_never_overdraw(make_user):
    # SPEC P4: guarded debit — 32 simultaneous $10 debits against $100: exactly 10 succeed.
    user = make_user("race@example.com", credits_usd=100)
    results = run_together([debit_worker(user, 10 * MICROS) for _ in range(32)])
    assert Counter(results) == {"ok": 10, "insufficient": 22}, results
    assert assert_ledger_conserved(user) == 0
    assert LedgerEntry.objects.filter(account__user=user, kind="purchase").count() == 10


def test_concurrent_grants_and_debits_conserve_the_ledger(make_user):
    # SPEC P4: grants and debits interleaving at once keep balance == Σ entries, never < 0.
    user = make_user("mixed@example.com", credits_usd=30)
    workers = [debit_worker(user, 7 * MICROS) for _ in range(16)]
    workers += [grant_worker(user, 2 * MICROS) for _ in range(16)]
    results = run_together(workers)
    counts = Counter(results)
    assert counts["granted"] == 16, results
    assert counts["ok"] + counts["insufficient"] == 16, results
    # Whatever the interleaving, the books balance: start + grants − successful debits.
    expected = (30 + 16 * 2 - 7 * counts["ok"]) * MICROS
    assert assert_ledger_conserved(user) == expected
    assert counts["ok"] >= 4  # the first $30 alone covers four debits


def test_post_entry_refuses_to_run_outside_a_transaction(make_user):
    # SPEC P4: a debit is always part of its caller's transaction, never autocommitted alone.
    user = make_user(credits_usd=10)
    with pytest.raises(RuntimeError, match="inside a transaction"):
        post_entry(
            user=user,
            amount_micros=-MICROS,
            kind="purchase",
            actor="system:test",
            now=timezone.now(),
        )
    assert assert_ledger_conserved(user) == 10 * MICROS


def test_declined_top_up_entry_waits_for_a_concurrent_debit(make_user, settings):
    # SPEC P4, S5: a zero-amount `top_up_declined` entry takes the account lock like any other
    # entry, so it cannot record a balance_after from before a debit that commits meanwhile.
    from billing.models import TopUpAttempt
    from billing.services import execute_top_up

    settings.CODING_PLANS_TOP_UP_BACKEND = "simulated-decline"
    user = make_user("declined@example.com", credits_usd=50)
    attempt = TopUpAttempt.objects.create(
        account=CreditAccount.objects.get(user=user),
        subscription_id=1,
        due_at=timezone.now(),
        amount_micros=20 * MICROS,
        backend="simulated-decline",
        created_at=timezone.now(),
    )
    debited = threading.Event()

    def slow_debit() -> str:
        with transaction.atomic():
            post_entry(
                user=user,
                amount_micros=-30 * MICROS,
                kind=LedgerEntry.Kind.PURCHASE,
                actor="system:test",
                now=timezone.now(),
            )
            debited.set()
            threading.Event().wait(0.5)  # keep the debit uncommitted while the top-up runs
        return "ok"

    def decline() -> str:
        assert debited.wait(timeout=10)
        execute_top_up(attempt_id=attempt.pk, now=timezone.now())
        return "declined"

    assert run_together([slow_debit, decline]) == ["ok", "declined"]
    assert assert_ledger_conserved(user) == 20 * MICROS
    last = LedgerEntry.objects.filter(account__user=user).order_by("-id").first()
    assert (last.kind, last.balance_after_micros) == ("top_up_declined", 20 * MICROS)
