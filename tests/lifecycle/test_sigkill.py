"""A billing sweep killed mid-run with SIGKILL leaves nothing half-processed (SPEC L1, L2, L8).

`manage.py run_billing_sweep` runs as a real child process against the test database; it is
killed once it has processed some subscriptions. Every subscription must then be either
untouched and still due, or fully processed (renewal: term + ledger debit + period moved; or
termination with its cleanup) — never a part of either. A second sweep then processes each of
the rest exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.db.models import F, Q, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from billing.models import CreditAccount, LedgerEntry
from subscriptions.models import Subscription, SweepRun
from subscriptions.sweep import run_billing_sweep
from tests.lifecycle.helpers import (
    backends_on_this_database,
    bulk_due_subscriptions,
    other_backends_on_this_database,
    outcome_per_subscription,
)
from tests.servers import test_database_url

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]
# Enough that the child needs a few seconds at typical speeds (one transaction each).
N = 500


def _classify(row: dict, due, funded: bool) -> str:
    untouched = (
        row["status"] == "active"
        and row["period_end"] == due
        and (row["terms"], row["renewals"]) == (1, 0)
        and row["installed_entry"]
        and row["credential_state"] == "assigned"
    )
    renewed = (
        funded
        and row["status"] == "active"
        and row["period_end"] == due + timedelta(days=30)
        and (row["terms"], row["renewals"]) == (2, 1)
        and row["installed_entry"]
        and row["credential_state"] == "assigned"
    )
    terminated = (
        not funded
        and (row["status"], row["reason"]) == ("canceled", "insufficient_credits")
        and row["period_end"] == due
        and (row["terms"], row["renewals"]) == (1, 0)
        and not row["installed_entry"]
        and row["credential_state"] == "revocation_pending"
        and row["credential_key_erased"]
    )
    if untouched:
        return "untouched"
    if renewed:
        return "renewed"
    if terminated:
        return "terminated"
    return f"HALF-PROCESSED {row}"


def _ledger_consistent() -> bool:
    """Every balance equals the sum of its ledger (no debit without its entry, or vice versa)."""
    return not (
        CreditAccount.objects.annotate(total=Coalesce(Sum("entries__amount_micros"), 0))
        .exclude(balance_micros=F("total"))
        .exists()
    )


def test_sigkilled_sweep_leaves_no_half_processed_subscription():
    start = timezone.now()
    subs = bulk_due_subscriptions(
        N,
        due_at=start - timedelta(days=1),
        funded=lambda i: i % 4 != 0,
        spread=timedelta(seconds=1),
    )
    by_id = {s.id: s for s in subs}
    env = dict(os.environ, DATABASE_URL=test_database_url(), DEBUG="1", PYTHONUNBUFFERED="1")
    processed = Q(status="canceled") | Q(current_period_end__gt=start)
    before = backends_on_this_database()  # sessions already here are not the child's
    with tempfile.TemporaryFile() as stderr:
        child = subprocess.Popen(
            [sys.executable, "manage.py", "run_billing_sweep", "--batch-size", "100"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            deadline = time.monotonic() + 120
            while Subscription.objects.filter(processed).count() < 20:
                assert child.poll() is None, "the sweep ended before it could be killed"
                assert time.monotonic() < deadline, "the child sweep made no progress"
                time.sleep(0.02)
            child.send_signal(signal.SIGKILL)
        finally:
            child.kill()
            child.wait(30)
        assert child.returncode == -signal.SIGKILL
        stderr.seek(0)
        assert b"Traceback" not in stderr.read()

    # PostgreSQL rolls back the killed child's open transaction when its connection drops.
    deadline = time.monotonic() + 30
    while other_backends_on_this_database(before):
        assert time.monotonic() < deadline, "the killed child's session is still there"
        time.sleep(0.05)

    killed_run = SweepRun.objects.get()
    assert killed_run.finished_at is None  # it never got to record its end
    outcomes = outcome_per_subscription(list(by_id))
    kinds = {
        sid: _classify(row, by_id[sid].due_at, by_id[sid].funded) for sid, row in outcomes.items()
    }
    half = [k for k in kinds.values() if k.startswith("HALF")]
    assert not half, half[:3]
    assert 0 < sum(k != "untouched" for k in kinds.values()) < N  # killed mid-run
    assert _ledger_consistent()

    # The next sweep processes each remaining subscription exactly once.
    left = sum(k == "untouched" for k in kinds.values())
    run = run_billing_sweep(now=timezone.now())
    assert run.counts["errors"] == 0
    assert run.counts["renewed"] + run.counts["terminated"] == left
    outcomes = outcome_per_subscription(list(by_id))
    for sid, row in outcomes.items():
        expected = "renewed" if by_id[sid].funded else "terminated"
        assert _classify(row, by_id[sid].due_at, by_id[sid].funded) == expected
    assert LedgerEntry.objects.filter(kind="renewal").count() == sum(s.funded for s in subs)
    assert _ledger_consistent()
