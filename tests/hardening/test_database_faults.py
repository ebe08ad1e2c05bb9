"""Database faults (issue 8, hardening 4; SPEC P4, L1, L2, L3, L8): the connection of a purchase or
of a sweep is killed in the middle of its transaction with `pg_terminate_backend` from a second
connection. Nothing partial may survive, and the same operation retried on a fresh connection
succeeds exactly once.

Real threads on real PostgreSQL (`transaction=True`). The victim is paused deterministically: a
helper transaction holds a lock the victim will need next — the credit account row (before the
purchase has done anything), the BYOK table (after the purchase has debited, written the ledger,
claimed a credential and inserted the subscription), the charged-term table (after a renewal's
debit and ledger entry) or the credential row (after a termination has marked the subscription
canceled). The test waits until `pg_stat_activity` shows the victim waiting on a `Lock` held by
the helper, checks in `pg_locks` that the victim really has written what it should have by then,
terminates its backend, lets the helper go, and inspects the database.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.core import mail
from django.db import OperationalError, connection, transaction
from django.utils import timezone

from adminops.models import AuditEvent
from billing.models import CreditAccount, LedgerEntry
from byok.models import ByokKey
from inventory.models import Credential
from subscriptions.models import ChargedTerm, PurchaseRequest, Subscription, SweepRun
from subscriptions.purchase import purchase_plan
from subscriptions.sweep import run_billing_sweep
from tests.hardening.conftest import PLUS

pytestmark = pytest.mark.django_db(transaction=True)

PRICE = 20_000_000  # Token Plan Plus, microdollars
TIMEOUT = 15


# --- harness -----------------------------------------------------------------------------------


class Helper(threading.Thread):
    """Holds `grab` (a lock) in an open transaction on its own connection until released."""

    def __init__(self, grab: Callable[[], Any]):
        super().__init__(daemon=True)
        self.grab = grab
        self.pid: int | None = None
        self.ready = threading.Event()
        self._release = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with transaction.atomic():
                self.grab()
                self.pid = connection.connection.info.backend_pid
                self.ready.set()
                assert self._release.wait(TIMEOUT)
                transaction.set_rollback(True)  # it changes nothing
        except BaseException as exc:
            self.error = exc
        finally:
            self.ready.set()
            connection.close()

    def __enter__(self) -> Helper:
        self.start()
        assert self.ready.wait(TIMEOUT)
        assert self.error is None, self.error
        return self

    def release(self) -> None:
        self._release.set()
        self.join(TIMEOUT)
        assert not self.is_alive() and self.error is None, self.error

    def __exit__(self, *exc: object) -> None:
        if self.is_alive():
            self.release()


class Victim(threading.Thread):
    """Runs `work` once (it gets killed), then — when told — closes the broken connection and
    runs it again on a fresh one, as a client or the next beat tick would."""

    def __init__(self, work: Callable[[], Any]):
        super().__init__(daemon=True)
        self.work = work
        self.pid: int | None = None
        self.connected = threading.Event()
        self.first_done = threading.Event()
        self.go_retry = threading.Event()
        self.first: tuple[str, Any] = ("crash", "did not finish")
        self.second: tuple[str, Any] = ("crash", "did not finish")

    def run(self) -> None:
        try:
            connection.ensure_connection()
            self.pid = connection.connection.info.backend_pid
            self.connected.set()
            try:
                self.first = ("ok", self.work())
            except Exception as exc:
                self.first = ("error", exc)
            self.first_done.set()
            if not self.go_retry.wait(TIMEOUT):
                return
            connection.close()  # a fresh connection for the retry
            try:
                self.second = ("ok", self.work())
            except Exception as exc:
                self.second = ("error", exc)
        finally:
            self.connected.set()
            self.first_done.set()
            connection.close()

    def __enter__(self) -> Victim:
        self.start()
        assert self.connected.wait(TIMEOUT) and self.pid
        return self

    def __exit__(self, *exc: object) -> None:
        self.go_retry.set()
        self.join(TIMEOUT)


def wait_until_blocked_by(victim: Victim, helper: Helper) -> None:
    """Until the victim's backend waits on a lock that the helper's backend holds."""
    deadline = time.monotonic() + TIMEOUT
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            assert not victim.first_done.is_set(), f"finished without blocking: {victim.first}"
            cursor.execute(
                "SELECT wait_event_type, %s = ANY(pg_blocking_pids(pid)) "
                "FROM pg_stat_activity WHERE pid = %s",
                [helper.pid, victim.pid],
            )
            row = cursor.fetchone()
            if row and row[0] == "Lock" and row[1]:
                return
            time.sleep(0.005)
    raise AssertionError("the victim never blocked on the helper's lock")


def tables_written_by(pid: int) -> set[str]:
    """Tables the backend holds RowExclusiveLock on: what its open transaction has written."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "WHERE l.pid = %s AND l.granted AND l.mode = 'RowExclusiveLock' AND c.relkind = 'r'",
            [pid],
        )
        return {row[0] for row in cursor.fetchall()}


def kill(victim: Victim) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [victim.pid])
        assert cursor.fetchone()[0] is True
    assert victim.first_done.wait(TIMEOUT), "the victim did not notice its connection died"


def lock_table(name: str) -> Callable[[], None]:
    def grab() -> None:
        with connection.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {name} IN SHARE MODE")  # blocks writers, not readers

    return grab


def lock_row(model, pk: int) -> Callable[[], None]:
    def grab() -> None:
        model.objects.select_for_update().get(pk=pk)

    return grab


def balance(user) -> int:
    return CreditAccount.objects.get(user=user).balance_micros


# --- purchase ----------------------------------------------------------------------------------


def _purchase_state(user) -> dict[str, Any]:
    return {
        "balance": balance(user),
        "ledger": LedgerEntry.objects.filter(account__user=user).count(),
        "subscriptions": Subscription.objects.filter(user=user).count(),
        "terms": ChargedTerm.objects.filter(subscription__user=user).count(),
        "byok": ByokKey.objects.filter(user=user).count(),
        "assigned": Credential.objects.filter(assigned_to=user).count(),
        "available": Credential.objects.filter(plan_id=PLUS, state="available").count(),
        "purchase_requests": PurchaseRequest.objects.filter(user=user).count(),
    }


@pytest.mark.parametrize(
    ("where", "must_have_written"),
    [
        # Before anything: waiting for the credit account row (the first lock of a purchase).
        ("credit_account_row", set()),
        # After the debit, the ledger entry, the claim and the subscription: the installed entry.
        (
            "byok_table",
            {
                "billing_creditaccount",
                "billing_ledgerentry",
                "inventory_credential",
                "subscriptions_subscription",
            },
        ),
    ],
)
def test_purchase_killed_mid_transaction_leaves_nothing_and_retries_once(
    where, must_have_written, make_user, stock
):
    stock(PLUS, 2)
    user = make_user(credits_usd=50)
    before = _purchase_state(user)
    account_id = CreditAccount.objects.get(user=user).pk
    grab = lock_row(CreditAccount, account_id) if where == "credit_account_row" else None
    grab = grab or lock_table(ByokKey._meta.db_table)

    def buy():
        return purchase_plan(
            user=user, plan_id=PLUS, idempotency_key="db-fault-1", now=timezone.now()
        )

    with Helper(grab) as helper, Victim(buy) as victim:
        wait_until_blocked_by(victim, helper)
        assert must_have_written <= tables_written_by(victim.pid)
        kill(victim)
        helper.release()
        kind, exc = victim.first
        assert kind == "error" and isinstance(exc, OperationalError), victim.first

        # P4: no debit without a subscription, no claim, no installed entry, no stored outcome.
        assert _purchase_state(user) == before

        victim.go_retry.set()
        victim.join(TIMEOUT)
    kind, outcome = victim.second
    assert kind == "ok", victim.second
    assert outcome.status == 201 and not outcome.replayed

    # Exactly once: one debit, one term, one claimed credential, one installed entry.
    after = _purchase_state(user)
    assert after["balance"] == before["balance"] - PRICE
    assert after["ledger"] == before["ledger"] + 1
    assert (after["subscriptions"], after["terms"], after["byok"], after["assigned"]) == (
        1,
        1,
        1,
        1,
    )
    assert after["available"] == before["available"] - 1
    assert after["purchase_requests"] == 1
    subscription = Subscription.objects.get(user=user)
    assert subscription.status == "active"
    assert ByokKey.objects.get(user=user).subscription_id == subscription.pk

    # The key's outcome is stored: a replay returns it and charges nothing.
    replay = purchase_plan(
        user=user, plan_id=PLUS, idempotency_key="db-fault-1", now=timezone.now()
    )
    assert replay.replayed and replay.subscription_id == subscription.pk
    assert _purchase_state(user) == after


# --- sweep -------------------------------------------------------------------------------------


def _due_subscription(make_user, stock, *, credits_usd: int) -> Subscription:
    stock(PLUS, 1)
    user = make_user(credits_usd=20 + credits_usd)
    outcome = purchase_plan(user=user, plan_id=PLUS, idempotency_key="due", now=timezone.now())
    now = timezone.now()
    Subscription.objects.filter(pk=outcome.subscription_id).update(
        current_period_start=now - timedelta(days=30, minutes=1),
        current_period_end=now - timedelta(minutes=1),
    )
    mail.outbox.clear()
    return Subscription.objects.select_related("credential").get(pk=outcome.subscription_id)


def _sweep_state(subscription: Subscription) -> dict[str, Any]:
    fresh = Subscription.objects.select_related("credential").get(pk=subscription.pk)
    return {
        "status": fresh.status,
        "period_end": fresh.current_period_end,
        "canceled_at": fresh.canceled_at,
        "balance": balance(fresh.user),
        "ledger": LedgerEntry.objects.filter(account__user=fresh.user).count(),
        "terms": ChargedTerm.objects.filter(subscription=fresh).count(),
        "credential": (fresh.credential.state, bool(fresh.credential.encrypted_key)),
        "installed": ByokKey.objects.filter(subscription=fresh).count(),
        "events": AuditEvent.objects.count(),
    }


def sweep() -> SweepRun:
    return run_billing_sweep(now=timezone.now())


def test_sweep_killed_mid_renewal_leaves_no_term_without_debit_and_retries_once(make_user, stock):
    subscription = _due_subscription(make_user, stock, credits_usd=50)
    before = _sweep_state(subscription)

    with (
        Helper(lock_table(ChargedTerm._meta.db_table)) as helper,
        Victim(sweep) as victim,
    ):
        wait_until_blocked_by(victim, helper)
        # The renewal has debited and written its ledger entry; the term insert waits.
        assert {"billing_creditaccount", "billing_ledgerentry"} <= tables_written_by(victim.pid)
        kill(victim)
        helper.release()

        # The sweep itself survives the lost connection: the subscription is counted as an
        # error (L1) and the run is still recorded, on a new connection.
        kind, run = victim.first
        assert kind == "ok", victim.first
        run.refresh_from_db()
        assert run.counts["errors"] == 1 and run.counts["renewed"] == 0
        assert [item["subscription_id"] for item in run.errors] == [subscription.pk]
        # L2: the debit and the term are one transaction — neither survived.
        assert _sweep_state(subscription) == before

        victim.go_retry.set()
        victim.join(TIMEOUT)
    kind, run = victim.second
    assert kind == "ok", victim.second
    assert run.counts["renewed"] == 1 and run.counts["errors"] == 0

    after = _sweep_state(subscription)
    assert after["balance"] == before["balance"] - PRICE
    assert after["ledger"] == before["ledger"] + 1
    assert after["terms"] == before["terms"] + 1
    assert after["period_end"] == before["period_end"] + timedelta(days=30)
    assert after["status"] == "active"
    # L8: sweeping the same instant again changes nothing more.
    assert sweep().counts["renewed"] == 0
    assert _sweep_state(subscription)["ledger"] == after["ledger"]


def test_sweep_killed_mid_termination_keeps_the_plan_whole_and_retries_once(make_user, stock):
    subscription = _due_subscription(make_user, stock, credits_usd=0)  # short: L3 termination
    before = _sweep_state(subscription)
    assert before["credential"] == ("assigned", True) and before["installed"] == 1

    with (
        Helper(lock_row(Credential, subscription.credential_id)) as helper,
        Victim(sweep) as victim,
    ):
        wait_until_blocked_by(victim, helper)
        # The subscription row is already marked canceled in the victim's transaction.
        assert "subscriptions_subscription" in tables_written_by(victim.pid)
        kill(victim)
        helper.release()
        kind, run = victim.first
        assert kind == "ok", victim.first
        run.refresh_from_db()
        assert run.counts["errors"] == 1 and run.counts["terminated"] == 0

        # Still live, the credential still assigned with its key, the installed entry kept,
        # no e-mail: nothing of a half termination.
        assert _sweep_state(subscription) == before
        assert mail.outbox == []

        victim.go_retry.set()
        victim.join(TIMEOUT)
    kind, run = victim.second
    assert kind == "ok", victim.second
    assert run.counts["terminated"] == 1 and run.counts["errors"] == 0

    after = _sweep_state(subscription)
    assert after["status"] == "canceled"
    assert after["credential"] == ("revocation_pending", False)
    assert after["installed"] == 0
    assert after["balance"] == before["balance"] and after["ledger"] == before["ledger"]
    assert (
        AuditEvent.objects.filter(
            event_type="subscription.ended", subject_id=str(subscription.pk)
        ).count()
        == 1
    )
    assert len(mail.outbox) == 1
    assert sweep().counts["terminated"] == 0
    assert len(mail.outbox) == 1
