"""A Hypothesis state machine over the whole subscription lifecycle (SPEC P, B, L, D, S5).

Random sequences of purchases (several users, several plans, repeated idempotency keys), credit
grants, cancel/resume, BYOK changes to the installed entry and own keys, clock jumps from an
hour to ~40 days, billing sweeps, auto top-up settings and an approving or declining top-up
backend, catalog price changes, operator terminations, revocation outcomes and account
deletions. After every step the invariants below must hold.

The test commits for real (`transaction=True`), so the sweep's on-commit work (top-up charges,
e-mails) runs exactly as in production; each example starts from empty tables.
"""

from __future__ import annotations

import copy
import itertools
import os
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings as django_settings
from django.core import mail
from django.db import connection, transaction
from django.test import override_settings
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from accounts.models import User
from accounts.services import create_user, delete_account
from billing.models import CreditAccount, TopUpAttempt
from billing.services import grant_credits, set_auto_top_up
from byok.errors import ProviderSlotOccupied
from byok.models import ByokKey
from byok.services import add_key, delete_key, update_key
from catalog import get_plan
from codingplans import crypto
from codingplans.errors import DomainError
from inventory.models import Credential
from inventory.services import record_revocation_outcome
from subscriptions.actions import cancel_at_period_end, resume_subscription, terminate_subscription
from subscriptions.errors import AlreadyCanceled, ResumeTooLate, SubscriptionNotLive
from subscriptions.intents import save_intent
from subscriptions.models import AvailabilityIntent, ChargedTerm, Subscription
from subscriptions.purchase import purchase_plan
from subscriptions.sweep import GRACE_PERIOD, run_billing_sweep
from tests.lifecycle.helpers import MAX, MICROS, PLUS, ULTRA

PLANS = (PLUS, MAX, ULTRA)
LIVE = ("active", "past_due")
BASE = datetime(2031, 1, 1, 9, 0, tzinfo=UTC)
MAX_USERS = 4

# SPEC L1–L8 in CI: at least 500 examples of 20 steps each (LIFECYCLE_EXAMPLES overrides
# the example count for a quicker local run).
EXAMPLES = int(os.environ.get("LIFECYCLE_EXAMPLES", "500"))
hypothesis_settings.register_profile(
    "lifecycle-state-machine",
    max_examples=EXAMPLES,
    stateful_step_count=20,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

_tags = itertools.count(1)
_KEEP_TABLES = {"django_migrations", "django_content_type", "auth_permission"}


def _wipe_database() -> None:
    """Empty every table the lifecycle writes. Foreign keys are DEFERRABLE INITIALLY DEFERRED,
    so one transaction may delete in any order."""
    tables = [
        t
        for t in connection.introspection.django_table_names(only_existing=True)
        if t not in _KEEP_TABLES
    ]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("; ".join(f"DELETE FROM {connection.ops.quote_name(t)}" for t in tables))


class LifecycleMachine(RuleBasedStateMachine):
    default_catalog: list = []
    examples = 0
    stats: Counter = Counter()  # what the examples exercised, printed by the test (-s)

    def __init__(self):
        super().__init__()
        type(self).examples += 1
        _wipe_database()
        django_settings.CODING_PLANS_TOP_UP_BACKEND = "simulated-approve"
        django_settings.CODING_PLANS_CATALOG = copy.deepcopy(self.default_catalog)
        mail.outbox = []
        self.now = BASE
        self.users: list[User] = []
        self.free_emails: list[str] = []  # of deleted accounts: free for a new sign-up (D1)
        self.taken: set[int] = set()  # credential ids ever claimed
        self.own_keys: dict[int, int] = {}  # BYOK id -> user id: the customer's own keys
        self.idempotency: dict[tuple[int, str], str] = {}  # (user, key) -> plan bought
        self.tag = next(_tags)
        self._restock(2)

    @initialize(
        plans=st.lists(st.sampled_from([PLUS, MAX, ULTRA, None]), min_size=2, max_size=2),
        # What is left after the purchase: often short at the first renewal (L3/L4 paths).
        extra=st.lists(st.sampled_from([0, 20, 50, 120, 5]), min_size=2, max_size=2),
        auto_top_up=st.lists(st.sampled_from([True, False]), min_size=2, max_size=2),
    )
    def customers(self, plans, extra, auto_top_up):
        """Two customers to start with (`sign_up` adds more), most with a first purchase, some
        with auto top-up."""
        for plan_id, usd, auto in zip(plans, extra, auto_top_up, strict=True):
            self._sign_up()
            user = self.users[-1]
            price = get_plan(plan_id).price_micros if plan_id else 0
            if price + usd * MICROS:
                grant_credits(
                    user=user, amount_micros=price + usd * MICROS, actor="staff:1", now=self.now
                )
            if auto:
                set_auto_top_up(
                    user=user, enabled=True, amount_micros=20 * MICROS, actor="t", now=self.now
                )
            if plan_id is not None:
                self.purchase(len(self.users) - 1, plan_id, "first")

    # -- helpers --------------------------------------------------------------------------

    def _sign_up(self, email: str | None = None) -> None:
        email = email or f"m{self.tag}-{next(_tags)}@example.com"
        self.users.append(create_user(email=email, password=None, now=self.now))

    def _restock(self, per_plan: int) -> None:
        rows = []
        for plan_id in PLANS:
            for _ in range(per_plan):
                key = f"sk-machine-{self.tag}-{next(_tags):08d}"
                rows.append(
                    Credential(
                        plan_id=plan_id,
                        encrypted_key=crypto.encrypt(key),
                        fingerprint=crypto.fingerprint(key),
                        upstream_plan_id=f"up-{key}",
                        created_at=self.now,
                    )
                )
        Credential.objects.bulk_create(rows)

    def _user(self, i: int) -> User | None:
        return self.users[i % len(self.users)] if self.users else None

    def _live(self, user) -> Subscription | None:
        return Subscription.objects.filter(user=user, status__in=LIVE).first()

    def _expected_purchase(self, user, plan_id: str, key: str) -> str:
        """SPEC P3/P5: replay first, then the errors in their documented order."""
        bought = self.idempotency.get((user.pk, key))
        if bought is not None:
            return "replay" if bought == plan_id else "idempotency_key_reused"
        if self._live(user) is not None:
            return "subscription_exists"
        if ByokKey.objects.filter(user=user, provider_id="minimax").exists():
            return "provider_slot_occupied"
        balance = CreditAccount.objects.get(user=user).balance_micros
        if balance < get_plan(plan_id).price_micros:
            return "insufficient_credits"
        if not Credential.objects.filter(plan_id=plan_id, state="available").exists():
            return "sold_out"
        return "ok"

    # -- customer actions -----------------------------------------------------------------

    @rule(
        i=st.integers(0, 7),
        plan_id=st.sampled_from(PLANS),
        key=st.sampled_from(["first", "a", "b"]),
    )
    def purchase(self, i, plan_id, key):
        user = self._user(i)
        if user is None:
            return
        expected = self._expected_purchase(user, plan_id, key)
        self.stats[f"purchase: {expected}"] += 1
        try:
            outcome = purchase_plan(user=user, plan_id=plan_id, idempotency_key=key, now=self.now)
        except DomainError as exc:
            assert exc.code == expected
            return
        if expected == "replay":
            assert outcome.replayed
            return
        assert expected == "ok" and not outcome.replayed
        self.idempotency[(user.pk, key)] = plan_id
        sub = Subscription.objects.get(pk=outcome.subscription_id)
        assert sub.status == "active" and sub.current_period_start == self.now
        assert sub.price_micros == get_plan(plan_id).price_micros  # the snapshot (L2)
        assert ByokKey.objects.filter(subscription=sub, user=user).exists()  # P6
        self.taken.add(sub.credential_id)

    @rule(i=st.integers(0, 7), usd=st.sampled_from([5, 20, 50, 120]))
    def grant(self, i, usd):
        user = self._user(i)
        if user is not None:
            grant_credits(user=user, amount_micros=usd * MICROS, actor="staff:1", now=self.now)

    @rule(i=st.integers(0, 7))
    def cancel(self, i):
        user = self._user(i)
        if user is None:
            return
        sub = self._live(user)
        if sub is None:
            ended = Subscription.objects.filter(user=user).first()
            if ended is not None:
                try:
                    cancel_at_period_end(user=user, subscription_id=ended.pk, now=self.now)
                except SubscriptionNotLive:
                    return
                raise AssertionError("canceling a terminal subscription must be refused")
            return
        result = cancel_at_period_end(user=user, subscription_id=sub.pk, now=self.now)
        # SPEC L5: access and status stay.
        assert result.cancel_at_period_end and result.status == sub.status

    @rule(i=st.integers(0, 7))
    def resume(self, i):
        user = self._user(i)
        sub = self._live(user) if user is not None else None
        if sub is None:
            return
        try:
            result = resume_subscription(user=user, subscription_id=sub.pk, now=self.now)
        except ResumeTooLate:
            assert sub.cancel_at_period_end and self.now >= sub.current_period_end
            return
        assert not result.cancel_at_period_end
        assert not sub.cancel_at_period_end or self.now < sub.current_period_end

    @rule(
        i=st.integers(0, 7),
        action=st.sampled_from(
            ["replace_installed", "delete_installed", "disable", "enable", "add_own", "delete_own"]
        ),
    )
    def byok(self, i, action):
        user = self._user(i)
        if user is None:
            return
        entry = ByokKey.objects.filter(user=user, provider_id="minimax").first()
        linked = entry is not None and entry.subscription_id is not None
        if action == "replace_installed" and linked:
            # SPEC B3: replacing the value makes it the customer's own key.
            update_key(
                user=user, key_id=entry.pk, api_key=f"sk-own-{next(_tags):010d}", now=self.now
            )
            self.own_keys[entry.pk] = user.pk
        elif action == "delete_installed" and linked:
            delete_key(user=user, key_id=entry.pk, now=self.now)
        elif action in ("disable", "enable") and entry is not None:
            # SPEC B3: enabling/disabling keeps the link.
            updated = update_key(
                user=user, key_id=entry.pk, enabled=action == "enable", now=self.now
            )
            assert updated.subscription_id == entry.subscription_id
        elif action == "add_own":
            try:
                key = add_key(
                    user=user,
                    provider_id="minimax",
                    api_key=f"sk-mine-{next(_tags):08d}",
                    now=self.now,
                )
            except ProviderSlotOccupied:
                assert entry is not None  # the slot holds one entry, enabled or disabled
                return
            assert entry is None
            self.own_keys[key.pk] = user.pk
        elif action == "delete_own" and entry is not None and not linked:
            # The user's own delete: the only lifecycle-independent way an own key goes.
            delete_key(user=user, key_id=entry.pk, now=self.now)
            self.own_keys.pop(entry.pk, None)

    @rule(
        i=st.integers(0, 7),
        enabled=st.booleans(),
        usd=st.sampled_from([5, 20, 50, 120]),
    )
    def set_auto_top_up(self, i, enabled, usd):
        user = self._user(i)
        if user is not None:
            set_auto_top_up(
                user=user,
                enabled=enabled,
                amount_micros=usd * MICROS,
                actor=f"user:{user.pk}",
                now=self.now,
            )

    @rule(i=st.integers(0, 7), plan_id=st.sampled_from(PLANS))
    def save_intent(self, i, plan_id):
        user = self._user(i)
        if user is not None:
            save_intent(user=user, plan_id=plan_id, now=self.now)

    @rule(i=st.integers(0, 7), now=st.integers(0, 3))
    def delete_account(self, i, now):
        user = self._user(i)
        if user is None or now:  # acts one time in four: it ends everything of the user
            return
        delete_account(user=user, actor=f"user:{user.pk}", now=self.now)
        self.users.remove(user)
        self.free_emails.append(user.email)
        self.own_keys = {k: u for k, u in self.own_keys.items() if u != user.pk}
        # SPEC D1
        assert not Subscription.objects.filter(user=user, status__in=LIVE).exists()
        assert not ByokKey.objects.filter(user=user).exists()
        assert not AvailabilityIntent.objects.filter(user=user).exists()
        assert not Credential.objects.filter(assigned_to=user).exists()
        fresh = User.objects.get(pk=user.pk)
        assert not fresh.is_active and fresh.email != user.email

    @rule(reuse=st.booleans())
    def sign_up(self, reuse):
        # SPEC D1: a deleted account's e-mail address is free again.
        if len(self.users) >= MAX_USERS:
            return
        self._sign_up(self.free_emails.pop() if reuse and self.free_emails else None)

    # -- operators and the world ----------------------------------------------------------

    @rule(
        delta=st.one_of(
            st.integers(1, 48).map(lambda h: timedelta(hours=h)),
            st.integers(1, 40).map(lambda d: timedelta(days=d)),
        )
    )
    def advance_clock(self, delta):
        self.now += delta

    @rule(
        delta=st.one_of(
            st.integers(1, 30).map(lambda h: timedelta(hours=h)),
            st.integers(25, 35).map(lambda d: timedelta(days=d)),
        )
    )
    def advance_clock_then_sweep(self, delta):
        self.now += delta
        self._sweep()

    @rule(
        offset=st.sampled_from(
            [
                timedelta(0),
                timedelta(seconds=1),
                timedelta(hours=1),
                GRACE_PERIOD - timedelta(microseconds=1),
                GRACE_PERIOD,
                timedelta(days=3),
            ]
        )
    )
    def jump_to_next_due_then_sweep(self, offset):
        """Jump to the next period end or grace deadline (plus an offset that hits the L4
        boundaries exactly), then sweep."""
        upcoming = [
            t
            for end, deadline in Subscription.objects.filter(status__in=LIVE).values_list(
                "current_period_end", "grace_deadline"
            )
            for t in (end, deadline)
            if t is not None and t > self.now
        ]
        if upcoming:
            self.now = min(upcoming) + offset
        self._sweep()

    def _sweep(self):
        self.stats["sweeps"] += 1
        before = {
            s.pk: s
            for s in Subscription.objects.filter(status__in=LIVE, current_period_end__lte=self.now)
        }
        terms_before = Counter(
            ChargedTerm.objects.filter(subscription_id__in=list(before)).values_list(
                "subscription_id", flat=True
            )
        )
        attempts_before = TopUpAttempt.objects.count()
        self.stats["sweeps over due subscriptions"] += bool(before)
        run = run_billing_sweep(now=self.now)
        counts = run.counts
        assert counts["errors"] == 0, run.errors
        for name, n in counts.items():
            if n:
                self.stats[f"sweeps with {name}"] += 1
        after = {s.pk: s for s in Subscription.objects.filter(pk__in=list(before))}
        terms_after = Counter(
            ChargedTerm.objects.filter(subscription_id__in=list(before)).values_list(
                "subscription_id", flat=True
            )
        )
        renewed = sum(terms_after.values()) - sum(terms_before.values())
        assert counts["renewed"] == renewed
        assert TopUpAttempt.objects.count() - attempts_before == counts["auto_top_up_triggered"]
        ended = Counter(s.cancellation_reason for s in after.values() if s.status == "canceled")
        assert counts["canceled"] == ended["user_requested"]
        assert counts["terminated"] == ended["insufficient_credits"] + ended["payment_failed"]
        for pk, old in before.items():
            new = after[pk]
            if old.cancel_at_period_end:
                # SPEC L5: no renewal, no top-up; canceled user_requested at the first sweep.
                assert new.status == "canceled" and new.cancellation_reason == "user_requested"
                assert terms_after[pk] == terms_before[pk]
                assert not TopUpAttempt.objects.filter(
                    subscription_id=pk, due_at=old.current_period_end, created_at=self.now
                ).exists()
            elif new.status == "active":
                assert new.current_period_end > self.now  # a backlog drains in one run (L1)
            elif new.status == "past_due":
                # SPEC L4: one attempt for this due term, grace of 24 h from the due time.
                assert new.grace_deadline == new.current_period_end + GRACE_PERIOD
                assert new.top_up_attempted_for == new.current_period_end
                assert (
                    TopUpAttempt.objects.filter(
                        subscription_id=pk, due_at=new.current_period_end
                    ).count()
                    == 1
                )
            if new.status == "canceled":
                assert new.canceled_at == self.now
        # S5: every attempt was charged after its commit; none is left pending.
        assert not TopUpAttempt.objects.filter(status="pending").exists()
        # SPEC L8: the same instant again changes nothing more — unless money arrived in
        # between (an approved top-up is credited after the first run commits; S5).
        again = run_billing_sweep(now=self.now).counts
        assert again["errors"] == 0
        if counts["auto_top_up_triggered"] == 0:
            assert again == dict.fromkeys(again, 0), again

    @rule(approve=st.booleans())
    def top_up_backend(self, approve):
        django_settings.CODING_PLANS_TOP_UP_BACKEND = (
            "simulated-approve" if approve else "simulated-decline"
        )

    @rule(factor=st.sampled_from([0.5, 1, 1.5, 2]))
    def change_catalog_prices(self, factor):
        # SPEC L2: affects new purchases only.
        catalog = copy.deepcopy(self.default_catalog)
        for entry in catalog:
            entry["price_micros"] = int(entry["price_micros"] * factor)
        django_settings.CODING_PLANS_CATALOG = catalog

    @rule(i=st.integers(0, 100), now=st.integers(0, 2))
    def operator_terminate(self, i, now):
        subs = list(Subscription.objects.order_by("id"))
        if not subs or now:  # acts one time in three, so plans live long enough to renew
            return
        sub = subs[i % len(subs)]
        if sub.status == "canceled":
            before = Subscription.objects.filter(pk=sub.pk).values().get()
            try:
                terminate_subscription(subscription_id=sub.pk, actor="staff:1", now=self.now)
            except AlreadyCanceled:
                assert Subscription.objects.filter(pk=sub.pk).values().get() == before  # L6
                return
            raise AssertionError("terminating a terminal subscription must be refused")
        ended = terminate_subscription(subscription_id=sub.pk, actor="staff:1", now=self.now)
        assert ended.status == "canceled"
        assert ended.cancellation_reason == "administrative_termination"

    @rule(i=st.integers(0, 100), action=st.sampled_from(["revoked", "failed", "restock"]))
    def inventory(self, i, action):
        if action == "restock":
            self._restock(1)
            return
        revoked = action == "revoked"
        # SPEC R3: outcomes never change a subscription or a BYOK entry (the invariants check).
        items = list(
            Credential.objects.filter(
                state__in=["revocation_pending", "revocation_failed"]
            ).order_by("id")
        )
        if items:
            record_revocation_outcome(
                credential_id=items[i % len(items)].pk,
                outcome="revoked" if revoked else "revocation_failed",
                note="" if revoked else "upstream said no",
                actor="staff:1",
                now=self.now,
            )

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def invariants_hold(self):
        self.stats["steps"] += 1
        # One round trip per step (this runs after each of ~10,000 steps): five result sets.
        with connection.cursor() as cursor:
            cursor.execute(_INVARIANT_QUERIES)
            raw = cursor.cursor
            (bad_accounts, charges_n, charges_total, pending_top_ups) = raw.fetchone()
            raw.nextset()
            subs = {row[0]: row for row in raw.fetchall()}
            raw.nextset()
            credentials = {pk: (state, erased) for pk, state, erased in raw.fetchall()}
            raw.nextset()
            entries = raw.fetchall()
            raw.nextset()
            terms = raw.fetchall()
        # SPEC P4 / DESIGN: balance == Σ ledger >= 0 for every account.
        assert bad_accounts == 0
        # SPEC S5: top-ups are charged right after the sweep's commit; none is left pending.
        assert pending_top_ups == 0
        # SPEC P2: at most one live subscription per user and provider.
        live_per_slot = Counter((s[1], s[2]) for s in subs.values() if s[3] in LIVE)
        assert all(n == 1 for n in live_per_slot.values())
        # SPEC I4: every assigned credential belongs to exactly one live subscription, and
        # every live subscription's credential is assigned.
        by_credential = Counter(s[4] for s in subs.values())
        assert all(n == 1 for n in by_credential.values())
        live_credentials = {s[4] for s in subs.values() if s[3] in LIVE}
        assigned = {pk for pk, (state, _) in credentials.items() if state == "assigned"}
        assert assigned == live_credentials
        # SPEC I4: once taken, never `available` again.
        self.taken |= set(by_credential)
        assert all(credentials[pk][0] != "available" for pk in self.taken)
        # SPEC I5: a credential past `assigned` has its key erased.
        assert all(erased for state, erased in credentials.values() if state not in _HOLDS_KEY)
        # SPEC B4/L3: a terminated subscription has no linked BYOK entry; a linked entry is
        # its subscription owner's and marked as managed (B2).
        for _, user_id, sub_id, managed_by in entries:
            if sub_id is not None:
                assert subs[sub_id][3] in LIVE and subs[sub_id][1] == user_id
                assert managed_by == "coding_plan"
        # SPEC B3/B4: the customer's own keys never disappear through the lifecycle.
        own = {pk: (user_id, sub_id) for pk, user_id, sub_id, _ in entries}
        for pk, user_id in self.own_keys.items():
            assert own.get(pk) == (user_id, None)
        reasons = set(Subscription.Reason.values)
        assert all(s[5] in reasons for s in subs.values() if s[3] == "canceled")
        assert all(s[5] is None for s in subs.values() if s[3] in LIVE)
        # SPEC L2: one purchase/renewal ledger entry per charged term, same amounts; terms are
        # contiguous from the purchase, each of the recorded length and price.
        assert charges_n == len(terms)
        assert charges_total == sum(t[3] for t in terms)
        chains = defaultdict(list)
        for sub_id, start, end, amount, kind, entry_amount in terms:
            assert entry_amount == -amount
            chains[sub_id].append((start, end, amount, kind))
        assert set(chains) == set(subs)
        for sub_id, chain in chains.items():
            *_, period_start, period_end, created_at, price, days = subs[sub_id]
            assert chain[0][0] == created_at and chain[0][3] == "purchase"
            assert all(kind == "renewal" for *_, kind in chain[1:])
            for k, (start, end, amount, _) in enumerate(chain):
                assert end - start == timedelta(days=days) and amount == price
                if k + 1 < len(chain):
                    assert chain[k + 1][0] == end  # SPEC L2: no drift, no gap, no overlap
            assert (chain[-1][0], chain[-1][1]) == (period_start, period_end)


_HOLDS_KEY = ("available", "assigned")
_INVARIANT_QUERIES = """
SELECT
  (SELECT count(*) FROM billing_creditaccount a
    WHERE a.balance_micros < 0
       OR a.balance_micros <> COALESCE(
            (SELECT sum(l.amount_micros) FROM billing_ledgerentry l WHERE l.account_id = a.id),
            0)),
  (SELECT count(*) FROM billing_ledgerentry WHERE kind IN ('purchase', 'renewal')),
  (SELECT COALESCE(-sum(amount_micros), 0) FROM billing_ledgerentry
    WHERE kind IN ('purchase', 'renewal')),
  (SELECT count(*) FROM billing_topupattempt WHERE status = 'pending');
SELECT id, user_id, provider_id, status, credential_id, cancellation_reason,
       current_period_start, current_period_end, created_at, price_micros, billing_period_days
  FROM subscriptions_subscription;
SELECT id, state, encrypted_key = '' FROM inventory_credential;
SELECT id, user_id, subscription_id, managed_by FROM byok_byokkey;
SELECT t.subscription_id, t.period_start, t.period_end, t.amount_micros, l.kind, l.amount_micros
  FROM subscriptions_chargedterm t JOIN billing_ledgerentry l ON l.id = t.ledger_entry_id
 ORDER BY t.subscription_id, t.period_start
"""


@pytest.mark.django_db(transaction=True)
def test_lifecycle_state_machine():
    LifecycleMachine.default_catalog = copy.deepcopy(django_settings.CODING_PLANS_CATALOG)
    LifecycleMachine.examples = 0
    LifecycleMachine.stats = Counter()
    # One override for the whole run; the machine then assigns these two settings directly
    # (a fresh override per assignment would nest thousands deep over 500 examples).
    with override_settings(
        CODING_PLANS_TOP_UP_BACKEND="simulated-approve",
        CODING_PLANS_CATALOG=copy.deepcopy(LifecycleMachine.default_catalog),
    ):
        run_state_machine_as_test(
            LifecycleMachine, settings=hypothesis_settings.get_profile("lifecycle-state-machine")
        )
    print(f"\n{LifecycleMachine.examples} examples:", dict(sorted(LifecycleMachine.stats.items())))
    assert LifecycleMachine.examples >= EXAMPLES
    # At CI size, the examples reached every lifecycle outcome (a guard against a machine that
    # stopped exercising the sweep, e.g. after a change to the rules).
    for outcome in ("renewed", "past_due", "terminated", "canceled", "auto_top_up_triggered"):
        assert LifecycleMachine.stats[f"sweeps with {outcome}"] > 0 or EXAMPLES < 200, outcome
