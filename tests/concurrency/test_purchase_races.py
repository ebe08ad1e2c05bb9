"""The atomic purchase under real concurrency (SPEC P2–P4; DESIGN "Transactions and locks").

Real threads on real PostgreSQL: every worker has its own database connection, commits for real
(`transaction=True`) and closes its connection when done. Workers connect first and then start
together at a barrier, so the interesting part — the purchase transactions — overlaps. Where an
interleaving matters and a barrier cannot force it, a helper transaction holds a row lock and the
test waits (via `pg_stat_activity`) until the other side is blocked on it.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from django.core.cache import cache
from django.db import connection, transaction
from django.db.models import Sum
from django.test import Client
from django.utils import timezone

from accounts.services import create_user
from accounts.tokens import create_api_token
from billing.models import CreditAccount, LedgerEntry
from billing.services import grant_credits
from byok.models import ByokKey
from byok.services import add_key
from codingplans import crypto
from codingplans.errors import DomainError
from inventory import services as inventory_services
from inventory.models import Credential
from subscriptions.intents import save_intent
from subscriptions.models import AvailabilityIntent, ChargedTerm, PurchaseRequest, Subscription
from subscriptions.purchase import purchase_plan

pytestmark = pytest.mark.django_db(transaction=True)

PLUS = "minimax-token-plan-plus"
MAX = "minimax-token-plan-max"
MICROS = 1_000_000
_emails = itertools.count(1)


@pytest.fixture(autouse=True)
def fresh_cache():
    """Rate-limit counters live in the cache and are keyed by user id, which restarts after each
    transactional test's flush: start every test with none left over from earlier ones."""
    cache.clear()
    yield
    cache.clear()


# --- harness --------------------------------------------------------------------------------


class Worker(threading.Thread):
    """Runs `work` on its own connection; the outcome is ("ok", value), ("error", code) for a
    domain refusal, or ("crash", repr) for anything else (which every test treats as a failure).
    """

    def __init__(self, work: Callable[[], Any], barrier: threading.Barrier | None = None):
        super().__init__(daemon=True)
        self.work = work
        self.barrier = barrier
        self.pid: int | None = None
        self.connected = threading.Event()
        self.result: tuple[str, Any] = ("crash", "did not finish")

    def run(self) -> None:
        try:
            connection.ensure_connection()
            self.pid = connection.connection.info.backend_pid
            self.connected.set()
            if self.barrier is not None:
                self.barrier.wait(timeout=30)
            self.result = ("ok", self.work())
        except DomainError as exc:
            self.result = ("error", exc.code)
        except Exception as exc:
            self.result = ("crash", repr(exc))
        finally:
            self.connected.set()
            connection.close()


def run_together(works: list[Callable[[], Any]], *, timeout: float = 60) -> list[tuple[str, Any]]:
    barrier = threading.Barrier(len(works))
    workers = [Worker(work, barrier) for work in works]
    for w in workers:
        w.start()
    deadline = time.monotonic() + timeout
    for w in workers:
        w.join(timeout=max(0.1, deadline - time.monotonic()))
    assert not any(w.is_alive() for w in workers), "a worker hung"
    results = [w.result for w in workers]
    assert not [r for r in results if r[0] == "crash"], results
    return results


def start(work: Callable[[], Any]) -> Worker:
    worker = Worker(work)
    worker.start()
    assert worker.connected.wait(10)
    return worker


def finish(worker: Worker) -> tuple[str, Any]:
    worker.join(timeout=30)
    assert not worker.is_alive(), "a worker hung"
    assert worker.result[0] != "crash", worker.result
    return worker.result


def wait_until_blocked(worker: Worker, timeout: float = 10) -> None:
    """Until the worker's backend waits on a lock held by another transaction."""
    deadline = time.monotonic() + timeout
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            assert worker.is_alive(), f"worker finished without blocking: {worker.result}"
            cursor.execute(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [worker.pid]
            )
            row = cursor.fetchone()
            if row and row[0] == "Lock":
                return
            time.sleep(0.005)
    raise AssertionError("the worker never blocked")


class HeldTransaction(threading.Thread):
    """Runs `grab` in a transaction on its own connection and keeps it open until `release()`."""

    def __init__(self, grab: Callable[[], Any]):
        super().__init__(daemon=True)
        self.grab = grab
        self.ready = threading.Event()
        self._release = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with transaction.atomic():
                self.grab()
                self.ready.set()
                assert self._release.wait(30)
        except BaseException as exc:
            self.error = exc
        finally:
            self.ready.set()
            connection.close()

    def __enter__(self) -> HeldTransaction:
        self.start()
        assert self.ready.wait(10)
        assert self.error is None, self.error
        return self

    def release(self) -> None:
        self._release.set()
        self.join(timeout=10)
        assert not self.is_alive() and self.error is None, self.error

    def __exit__(self, *exc: object) -> None:
        if self.is_alive():
            self.release()


def new_customer(credits_usd: int = 0):
    """A customer without a usable password (nothing here logs in), so creation is cheap."""
    user = create_user(email=f"racer{next(_emails)}@example.com", password=None, now=timezone.now())
    if credits_usd:
        grant_credits(
            user=user,
            amount_micros=credits_usd * MICROS,
            actor="system:test",
            now=timezone.now(),
        )
    return user


def buyer(user, plan_id: str = PLUS, key: str = "key") -> Callable[[], Any]:
    def work():
        return purchase_plan(user=user, plan_id=plan_id, idempotency_key=key, now=timezone.now())

    return work


def adder(user, api_key: str) -> Callable[[], Any]:
    def work():
        return add_key(user=user, provider_id="minimax", api_key=api_key, now=timezone.now()).pk

    return work


def balance(user) -> int:
    return CreditAccount.objects.get(user=user).balance_micros


def assert_ledger_conserved() -> None:
    """SPEC P4: for every account, balance == Σ entries, every running balance_after matches and
    nothing ever went negative."""
    for account in CreditAccount.objects.all():
        running = 0
        for entry in LedgerEntry.objects.filter(account=account).order_by("id"):
            running += entry.amount_micros
            assert entry.balance_after_micros == running
            assert running >= 0
        assert account.balance_micros == running >= 0


# --- P4: many customers, little stock ---------------------------------------------------------


def test_64_customers_race_for_5_credentials(stock):
    # SPEC P4 (2)(3), I4: SKIP LOCKED claims — exactly 5 winners, 59 sold_out, nothing else.
    stock(PLUS, 5)
    customers = [new_customer(credits_usd=25) for _ in range(64)]

    results = run_together([buyer(c, key=f"race-{i}") for i, c in enumerate(customers)])

    outcomes = Counter("ok" if kind == "ok" else value for kind, value in results)
    assert outcomes == {"ok": 5, "sold_out": 59}, outcomes

    winners = [c for c, (kind, _) in zip(customers, results, strict=True) if kind == "ok"]
    losers = [c for c, (kind, _) in zip(customers, results, strict=True) if kind != "ok"]
    subs = list(Subscription.objects.all())
    assert len(subs) == 5 and all(s.status == Subscription.Status.ACTIVE for s in subs)
    assert {s.user_id for s in subs} == {w.pk for w in winners}

    # The 5 credentials are assigned, each to a different subscription, to that subscription's
    # customer; each winner got the key of its own credential installed.
    credentials = {c.pk: c for c in Credential.objects.all()}
    assert len(credentials) == 5
    assert all(c.state == Credential.State.ASSIGNED for c in credentials.values())
    assert sorted(s.credential_id for s in subs) == sorted(credentials)
    for sub in subs:
        credential = credentials[sub.credential_id]
        assert credential.assigned_to_id == sub.user_id
        entry = ByokKey.objects.get(user_id=sub.user_id)
        assert entry.subscription_id == sub.pk and entry.managed_by == "coding_plan"
        assert crypto.decrypt(entry.encrypted_key) == crypto.decrypt(credential.encrypted_key)

    # Money: winners paid once, losers untouched, the books balance.
    assert all(balance(w) == 5 * MICROS for w in winners)
    assert all(balance(loser) == 25 * MICROS for loser in losers)
    debited = LedgerEntry.objects.filter(kind=LedgerEntry.Kind.PURCHASE).aggregate(
        t=Sum("amount_micros")
    )["t"]
    assert debited == -5 * 20 * MICROS
    assert ChargedTerm.objects.count() == 5 and PurchaseRequest.objects.count() == 5
    assert not ByokKey.objects.filter(user__in=losers).exists()
    assert_ledger_conserved()


@pytest.mark.parametrize("mark", ["middle", "above_all"])
def test_racing_claims_take_every_credential_once_wherever_the_mark_is(stock, mark):
    # Issue 20: the claim looks above the process's last claimed id first, below it after.
    # With the mark inside or above the stock, 64 racing customers still take each of the 5
    # credentials exactly once, and only the rest are told sold_out (SPEC P4, P5, I4).
    stock(PLUS, 5)
    ids = sorted(Credential.objects.values_list("id", flat=True))
    inventory_services._claimed_mark[PLUS] = ids[2] if mark == "middle" else ids[-1] + 1000
    customers = [new_customer(credits_usd=25) for _ in range(64)]

    results = run_together([buyer(c, key=f"mark-{i}") for i, c in enumerate(customers)])

    outcomes = Counter("ok" if kind == "ok" else value for kind, value in results)
    assert outcomes == {"ok": 5, "sold_out": 59}, outcomes
    subs = list(Subscription.objects.all())
    assert sorted(s.credential_id for s in subs) == ids
    assert all(
        c.state == Credential.State.ASSIGNED and c.assigned_to_id is not None
        for c in Credential.objects.all()
    )
    assert len({s.user_id for s in subs}) == 5
    assert_ledger_conserved()


# --- P3: one key, many requests at once ---------------------------------------------------------


def test_same_key_sent_50_times_at_once_has_one_outcome(stock, settings):
    # SPEC P3: concurrent requests with one key produce one outcome; the later ones wait for the
    # first and return its response (no "key in use" error). Over HTTP, so the bytes are compared.
    settings.PURCHASE_RATE_LIMIT_PER_MINUTE = 1000  # S: the per-user limit is not under test here
    stock(PLUS, 3)
    user = new_customer(credits_usd=100)
    token = create_api_token(user=user, now=timezone.now()).plaintext

    def post():
        client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
        r = client.post(
            "/api/v1/coding-plans/purchases",
            {"plan_id": PLUS},
            content_type="application/json",
            HTTP_IDEMPOTENCY_KEY="one-key",
        )
        return r.status_code, r.content

    results = run_together([post for _ in range(50)])
    responses = {value for _, value in results}
    assert len(responses) == 1, responses
    ((status, _body),) = responses
    assert status == 201

    assert Subscription.objects.count() == 1 and ChargedTerm.objects.count() == 1
    assert PurchaseRequest.objects.count() == 1
    assert LedgerEntry.objects.filter(kind=LedgerEntry.Kind.PURCHASE).count() == 1
    assert balance(user) == 80 * MICROS
    assert Credential.objects.filter(state=Credential.State.AVAILABLE).count() == 2
    assert ByokKey.objects.count() == 1
    assert_ledger_conserved()


def test_same_key_at_once_at_the_service_reports_one_fresh_outcome(stock):
    # SPEC P3: exactly one request did the purchase; the others replayed its stored outcome.
    stock(PLUS)
    user = new_customer(credits_usd=20)
    results = run_together([buyer(user, key="k") for _ in range(20)])
    outcomes = [value for _, value in results]
    assert [o.replayed for o in outcomes].count(False) == 1
    first = outcomes[0]
    for o in outcomes:
        assert (o.status, o.body, o.subscription_id) == (
            first.status,
            first.body,
            first.subscription_id,
        )
        assert list(o.body) == list(first.body)  # same keys in the same order
    assert balance(user) == 0 and ChargedTerm.objects.count() == 1


def test_same_key_refused_at_once_consumes_nothing(stock):
    # SPEC P3: when the first is refused, the others are judged afresh — and refused alike.
    user = new_customer(credits_usd=20)
    results = run_together([buyer(user, key="k") for _ in range(10)])
    assert results == [("error", "sold_out")] * 10
    assert not PurchaseRequest.objects.exists() and balance(user) == 20 * MICROS
    stock(PLUS)
    assert purchase_plan(user=user, plan_id=PLUS, idempotency_key="k", now=timezone.now())


# --- P2: two plans of one provider at once --------------------------------------------------------


def test_plus_and_max_at_once_only_one_succeeds(stock):
    # SPEC P2: one live subscription per user and provider, even when both requests race.
    rounds = 8
    stock(PLUS, rounds)
    stock(MAX, rounds)
    for _ in range(rounds):
        user = new_customer(credits_usd=100)
        results = run_together([buyer(user, PLUS, "plus"), buyer(user, MAX, "max")])
        assert sorted(kind if kind == "ok" else value for kind, value in results) == [
            "ok",
            "subscription_exists",
        ], results
        sub = Subscription.objects.get(user=user)
        winner = PLUS if results[0][0] == "ok" else MAX
        assert sub.plan_id == winner
        price = {PLUS: 20, MAX: 50}[winner]
        assert balance(user) == (100 - price) * MICROS
        assert ChargedTerm.objects.filter(subscription__user=user).count() == 1
        assert LedgerEntry.objects.filter(account__user=user, kind="purchase").count() == 1
        assert PurchaseRequest.objects.filter(user=user).count() == 1
        assert ByokKey.objects.filter(user=user).count() == 1
    assert Credential.objects.filter(state=Credential.State.ASSIGNED).count() == rounds
    assert_ledger_conserved()


# --- P4 (1): the customer's own key racing the installed entry --------------------------------


def _assert_byok_race_outcome(user, credential_count_before: int, purchase, added) -> str:
    """Either the purchase lost (slot occupied, nothing charged, the own key stays) or it won
    (the add is refused and the slot holds the installed entry) — never both, never neither."""
    keys = list(ByokKey.objects.filter(user=user))
    assert len(keys) == 1, keys
    (key,) = keys
    available = Credential.objects.filter(state=Credential.State.AVAILABLE).count()
    if purchase == ("error", "provider_slot_occupied"):
        assert added[0] == "ok", added
        assert key.pk == added[1] and key.managed_by is None and key.subscription_id is None
        assert not Subscription.objects.filter(user=user).exists()
        assert not LedgerEntry.objects.filter(account__user=user, kind="purchase").exists()
        assert balance(user) == 20 * MICROS
        assert available == credential_count_before
        return "key_first"
    assert purchase[0] == "ok", purchase
    assert added == ("error", "provider_slot_occupied"), added
    sub = Subscription.objects.get(user=user)
    assert key.subscription_id == sub.pk and key.managed_by == "coding_plan"
    assert balance(user) == 0
    assert ChargedTerm.objects.filter(subscription=sub).count() == 1
    assert available == credential_count_before - 1
    return "purchase_first"


def test_own_key_added_while_purchase_in_flight(stock):
    # SPEC P4 (1), B1: 20 rounds of a purchase and an add of the customer's own MiniMax key
    # started together. The add is staggered by 0–38 ms across rounds (a purchase takes a few
    # tens of ms), so both orders and the overlaps between them occur; every round must end in
    # exactly one of the two clean outcomes.
    rounds = 20
    stock(PLUS, rounds)
    seen = Counter()
    for i in range(rounds):
        user = new_customer(credits_usd=20)
        before = Credential.objects.filter(state=Credential.State.AVAILABLE).count()
        delay = i * 0.002
        purchase_work = buyer(user, key=f"round-{i}")

        def add_work(user=user, delay=delay, i=i):
            time.sleep(delay)
            return adder(user, f"sk-own-key-round-{i:04d}")()

        purchase, added = run_together([purchase_work, add_work])
        seen[_assert_byok_race_outcome(user, before, purchase, added)] += 1
    assert sum(seen.values()) == rounds
    assert_ledger_conserved()


def test_purchase_waiting_on_an_uncommitted_own_key_rolls_back_entirely(stock):
    # SPEC P4 (1): the slot check passed, but the customer's own key (still uncommitted) wins
    # the unique slot: the installed entry cannot be created, so the debit, the claim, the
    # subscription and the term all roll back — nothing to refund.
    stock(PLUS)
    user = new_customer(credits_usd=20)
    own_key = "sk-own-key-held-open-0001"

    def insert_own_key():
        now = timezone.now()
        ByokKey.objects.create(
            user=user,
            provider_id="minimax",
            encrypted_key=crypto.encrypt(own_key),
            key_hint=crypto.key_hint(own_key),
            created_at=now,
            updated_at=now,
        )

    with HeldTransaction(insert_own_key) as held:
        purchase = start(buyer(user))
        wait_until_blocked(purchase)  # on the unique (user, provider) index
        held.release()
    assert finish(purchase) == ("error", "provider_slot_occupied")

    key = ByokKey.objects.get(user=user)
    assert crypto.decrypt(key.encrypted_key) == own_key and key.managed_by is None
    assert balance(user) == 20 * MICROS
    assert not LedgerEntry.objects.filter(account__user=user, kind="purchase").exists()
    assert not Subscription.objects.exists() and not ChargedTerm.objects.exists()
    assert Credential.objects.get().state == Credential.State.AVAILABLE
    assert not PurchaseRequest.objects.exists()
    assert_ledger_conserved()


def test_own_key_added_while_installed_entry_uncommitted_is_refused(stock):
    # SPEC P4, B1: the purchase has inserted its installed entry but not yet committed (held on
    # step 7, the intent, by a lock); the customer's add waits on the slot and is then refused.
    stock(PLUS)
    user = new_customer(credits_usd=20)
    save_intent(user=user, plan_id=PLUS, now=timezone.now())

    def lock_intent():
        AvailabilityIntent.objects.select_for_update().get(user=user, plan_id=PLUS)

    with HeldTransaction(lock_intent) as held:
        purchase = start(buyer(user))
        wait_until_blocked(purchase)  # past the installed entry, on the intent row
        add = start(adder(user, "sk-own-key-too-late-0001"))
        wait_until_blocked(add)  # on the purchase's uncommitted installed entry
        held.release()
    purchase_result = finish(purchase)
    assert purchase_result[0] == "ok" and purchase_result[1].status == 201
    assert finish(add) == ("error", "provider_slot_occupied")

    sub = Subscription.objects.get(user=user)
    key = ByokKey.objects.get(user=user)
    assert key.subscription_id == sub.pk and key.managed_by == "coding_plan"
    assert not AvailabilityIntent.objects.filter(user=user).exists()
    assert balance(user) == 0
    assert_ledger_conserved()
