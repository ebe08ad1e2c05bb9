"""Billing sweeps racing each other and an operator, with real threads on real PostgreSQL
(SPEC L1, L6, L8; DESIGN "Transactions and locks").

Each thread has its own database connection, commits for real and closes its connection when
done, so these tests use `transaction=True`.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from adminops.models import AuditEvent
from billing.models import LedgerEntry
from subscriptions.actions import terminate_subscription
from subscriptions.errors import AlreadyCanceled
from subscriptions.models import ChargedTerm, Subscription
from subscriptions.sweep import run_billing_sweep
from tests.lifecycle.helpers import (
    bulk_due_subscriptions,
    outcome_per_subscription,
    relax_commit_durability,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fast_commits(transactional_db):
    relax_commit_durability()  # speed only: no fsync per commit; semantics unchanged


def run_together(workers: list[Callable[[], object]], timeout: float = 120) -> list[object]:
    """Start every worker at the same instant (a barrier); each closes its own connection."""
    barrier = threading.Barrier(len(workers))
    results: list[object] = [None] * len(workers)

    def run(i: int, work: Callable[[], object]) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = work()
        except Exception as exc:  # reported by the assertions below
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, w)) for i, w in enumerate(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    return results


def test_two_simultaneous_sweeps_act_once_on_each_of_500_subscriptions():
    # SPEC L1: each subscription in its own transaction under a row lock, so two sweeps at
    # once never act twice on one subscription; their counts add up.
    now = timezone.now()
    subs = bulk_due_subscriptions(
        500,
        due_at=now - timedelta(days=2),
        funded=lambda i: i % 3 != 0,
        spread=timedelta(seconds=30),
    )
    ids = [s.id for s in subs]
    funded = {s.id: s.funded for s in subs}

    runs = run_together([lambda: run_billing_sweep(now=now) for _ in range(2)])

    assert all(not isinstance(r, Exception) for r in runs), runs
    total = Counter()
    for run in runs:
        total.update(run.counts)
    assert total["errors"] == 0
    assert total["renewed"] == sum(funded.values())
    assert total["terminated"] == len(ids) - sum(funded.values())
    assert total["past_due"] == total["canceled"] == total["auto_top_up_triggered"] == 0

    outcomes = outcome_per_subscription(ids)
    for sub_id, row in outcomes.items():
        if funded[sub_id]:
            # Renewed exactly once: one renewal debit, two terms, the period moved once.
            assert (row["status"], row["terms"], row["renewals"]) == ("active", 2, 1), row
            assert row["installed_entry"] and row["credential_state"] == "assigned"
        else:
            # Terminated exactly once, with its cleanup.
            assert (row["status"], row["reason"]) == ("canceled", "insufficient_credits"), row
            assert (row["terms"], row["renewals"]) == (1, 0), row
            assert not row["installed_entry"]
            assert row["credential_state"] == "revocation_pending"
    ended_events = Counter(
        AuditEvent.objects.filter(event_type="subscription.ended").values_list(
            "subject_id", flat=True
        )
    )
    assert set(ended_events.values()) == {1}
    assert len(ended_events) == len(ids) - sum(funded.values())
    # Every renewal is one ledger debit and one term; no account was charged twice.
    assert LedgerEntry.objects.filter(kind="renewal").count() == sum(funded.values())
    assert ChargedTerm.objects.count() == len(ids) + sum(funded.values())


@pytest.mark.parametrize("funded", [False, True], ids=["short", "funded"])
def test_operator_termination_racing_the_sweep_never_overwrites_a_terminal_row(funded):
    # SPEC L6: the operator's termination must not overwrite a subscription the sweep already
    # ended (and the sweep must not touch one the operator ended). Repeated on several
    # subscriptions so both orders occur.
    subs = bulk_due_subscriptions(
        12,
        due_at=timezone.now() - timedelta(hours=1),
        funded=lambda i: funded,
        spread=timedelta(minutes=1),
    )
    for sub in subs:
        now = sub.due_at  # the sweep finds exactly this one newly due
        results = run_together(
            [
                lambda sub=sub, now=now: terminate_subscription(
                    subscription_id=sub.id, actor="staff:7", now=now
                ),
                lambda now=now: run_billing_sweep(now=now),
            ]
        )
        terminated, run = results
        assert not isinstance(run, Exception), run
        row = Subscription.objects.get(pk=sub.id)
        assert row.status == "canceled"
        ended = AuditEvent.objects.filter(
            subject_type="subscriptions.subscription",
            subject_id=str(sub.id),
            event_type="subscription.ended",
        )
        assert ended.count() == 1  # one terminal write, never two
        if isinstance(terminated, AlreadyCanceled):
            # The sweep ended it first (short of credits); its reason stands.
            assert not funded
            assert row.cancellation_reason == "insufficient_credits"
            assert run.counts["terminated"] == 1
            assert ended.get().actor == "system:sweep"
        else:
            assert not isinstance(terminated, Exception), terminated
            assert row.cancellation_reason == "administrative_termination"
            assert ended.get().actor == "staff:7"
            assert run.counts["terminated"] == 0
            # A funded one may have been renewed by the sweep first; then terminated, once.
            assert run.counts["renewed"] in ((0, 1) if funded else (0,))
        assert (
            AuditEvent.objects.filter(
                subject_type="inventory.credential",
                event_type="credential.revocation_requested",
                new_values__state="revocation_pending",
            ).count()
            == subs.index(sub) + 1
        )
