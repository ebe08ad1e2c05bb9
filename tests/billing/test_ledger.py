"""The credit ledger: the balance is the sum of its entries and never goes negative (SPEC P4, U7).

A Hypothesis state machine drives random grants and debits against one fresh account per
example and checks the conservation invariants after every step.
"""

from __future__ import annotations

import itertools

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from accounts.services import create_user
from billing.errors import AdjustmentTooLarge, InsufficientCredits, InvalidCreditAmount
from billing.models import CreditAccount, LedgerEntry
from billing.services import (
    adjust_credits,
    debit_refund,
    forfeit_balance,
    grant_card_payment,
    grant_credits,
    lock_credit_account,
    post_entry,
    reverse_refund,
)
from tests.billing.helpers import ledger_state

pytestmark = pytest.mark.django_db

MICROS = 1_000_000
_machine_users = itertools.count(1)
_refund_ids = itertools.count(1_000_000)


def debit(user, amount_micros: int) -> LedgerEntry:
    with transaction.atomic():
        return post_entry(
            user=user,
            amount_micros=-amount_micros,
            kind=LedgerEntry.Kind.PURCHASE,
            actor="system:test",
            now=timezone.now(),
            reference="test:debit",
        )


# Amounts in whole cents, as the product charges and grants them; small enough that debits
# often exceed the balance.
cents = st.integers(min_value=1, max_value=50_000).map(lambda c: c * 10_000)


class LedgerMachine(RuleBasedStateMachine):
    """SPEC P4: balance == Σ entries == last balance_after, balance >= 0, failed debits no-op;
    with card payments (M2: one per PaymentIntent), forfeiture (M10), refunds and their
    reversals (M5: never above the balance, one reversal per refund) and adjustments (M6:
    a removal never below zero) in the mix."""

    def __init__(self):
        super().__init__()
        self.user = create_user(
            email=f"ledger{next(_machine_users)}@example.com",
            password=None,
            now=timezone.now(),
        )
        self.expected = 0
        self.card_references: list[str] = []
        self.refunds: list[tuple[int, int]] = []  # (refund id, amount) not yet reversed
        self.reversed: list[int] = []

    @rule(amount=st.integers(min_value=500, max_value=100_000).map(lambda c: c * 10_000))
    def card_payment(self, amount):
        # SPEC M1, M2: a card payment ($5 to $1,000) credits one `card_payment` entry.
        reference = f"stripe_pi:pi_machine_{len(self.card_references)}_{self.user.pk}"
        with transaction.atomic():
            entry = grant_card_payment(
                user_id=self.user.pk,
                amount_micros=amount,
                reference=reference,
                actor="system:test",
                now=timezone.now(),
            )
        self.card_references.append(reference)
        self.expected += amount
        assert entry.kind == LedgerEntry.Kind.CARD_PAYMENT
        assert entry.balance_after_micros == self.expected

    @rule(data=st.data())
    def card_payment_granted_again(self, data):
        # SPEC M2: a second grant for one PaymentIntent is refused by the database and changes
        # nothing, whatever path it came from.
        if not self.card_references:
            return
        reference = data.draw(st.sampled_from(self.card_references))
        before = ledger_state(self.user)
        with pytest.raises(IntegrityError), transaction.atomic():
            grant_card_payment(
                user_id=self.user.pk,
                amount_micros=5_000_000,
                reference=reference,
                actor="system:test",
                now=timezone.now(),
            )
        assert ledger_state(self.user) == before

    @rule()
    def forfeit(self):
        # SPEC M10: account deletion forfeits the whole balance with one `forfeited` entry.
        with transaction.atomic():
            entry = forfeit_balance(user_id=self.user.pk, actor="system:test", now=timezone.now())
        if self.expected:
            assert entry.kind == LedgerEntry.Kind.FORFEITED
            assert entry.amount_micros == -self.expected
            assert entry.balance_after_micros == 0
        else:
            assert entry is None
        self.expected = 0

    @rule(amount=cents)
    def grant(self, amount):
        entry = grant_credits(
            user=self.user, amount_micros=amount, actor="system:test", now=timezone.now()
        )
        self.expected += amount
        assert entry.kind == LedgerEntry.Kind.GRANT
        assert entry.amount_micros == amount
        assert entry.balance_after_micros == self.expected

    @rule(amount=cents)
    def debit(self, amount):
        if amount > self.expected:
            # SPEC P4: a debit larger than the balance is refused and changes nothing.
            before = ledger_state(self.user)
            with pytest.raises(InsufficientCredits):
                debit(self.user, amount)
            assert ledger_state(self.user) == before
        else:
            entry = debit(self.user, amount)
            self.expected -= amount
            assert entry.amount_micros == -amount
            assert entry.balance_after_micros == self.expected

    @rule()
    def debit_everything(self):
        # The guard is `balance >= amount`: the exact balance is debitable, to zero.
        if self.expected:
            debit(self.user, self.expected)
            self.expected = 0

    @rule()
    def debit_one_micro_more_than_balance(self):
        before = ledger_state(self.user)
        with pytest.raises(InsufficientCredits):
            debit(self.user, self.expected + 1)
        assert ledger_state(self.user) == before

    @rule(amount=cents, remove=st.booleans())
    def adjust(self, amount, remove):
        # SPEC M6: a grant or a removal with a reason; a removal never below zero.
        signed = -amount if remove else amount
        if remove and amount > self.expected:
            before = ledger_state(self.user)
            with pytest.raises(AdjustmentTooLarge):
                adjust_credits(
                    user=self.user,
                    amount_micros=signed,
                    reason="machine",
                    actor="staff:1",
                    now=timezone.now(),
                )
            assert ledger_state(self.user) == before
            return
        entry = adjust_credits(
            user=self.user,
            amount_micros=signed,
            reason="machine",
            actor="staff:1",
            now=timezone.now(),
        )
        self.expected += signed
        assert entry.kind == LedgerEntry.Kind.ADJUSTMENT
        assert entry.balance_after_micros == self.expected

    @rule(amount=cents)
    def refund(self, amount):
        # SPEC M5: a refund's debit, under the account lock; never above the balance.
        refund_id = next(_refund_ids)
        if amount > self.expected:
            before = ledger_state(self.user)
            with pytest.raises(InsufficientCredits), transaction.atomic():
                lock_credit_account(user_id=self.user.pk)
                debit_refund(
                    user_id=self.user.pk,
                    amount_micros=amount,
                    refund_id=refund_id,
                    actor="staff:1",
                    now=timezone.now(),
                    reason="machine",
                )
            assert ledger_state(self.user) == before
            return
        with transaction.atomic():
            lock_credit_account(user_id=self.user.pk)
            entry = debit_refund(
                user_id=self.user.pk,
                amount_micros=amount,
                refund_id=refund_id,
                actor="staff:1",
                now=timezone.now(),
                reason="machine",
            )
        self.expected -= amount
        self.refunds.append((refund_id, amount))
        assert entry.kind == LedgerEntry.Kind.REFUND and entry.amount_micros == -amount

    @rule(data=st.data())
    def refund_reversed(self, data):
        # SPEC M5: a refund Stripe failed puts its credits back, once per refund.
        if not self.refunds:
            return
        refund_id, amount = data.draw(st.sampled_from(self.refunds))
        with transaction.atomic():
            reverse_refund(
                user_id=self.user.pk,
                amount_micros=amount,
                refund_id=refund_id,
                actor="system:test",
                now=timezone.now(),
            )
        self.expected += amount
        self.refunds.remove((refund_id, amount))
        self.reversed.append(refund_id)
        before = ledger_state(self.user)
        with pytest.raises(IntegrityError), transaction.atomic():
            reverse_refund(
                user_id=self.user.pk,
                amount_micros=amount,
                refund_id=refund_id,
                actor="system:test",
                now=timezone.now(),
            )
        assert ledger_state(self.user) == before

    @invariant()
    def ledger_is_conserved(self):
        balance, total, last, count = ledger_state(self.user)
        assert balance == self.expected
        assert balance == total
        assert balance >= 0
        assert last == (balance if count else None)


def test_random_grants_and_debits_conserve_the_ledger(db):
    # SPEC P4, U7: every step keeps balance == sum of entries == last balance_after, never < 0.
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=100,
            stateful_step_count=10,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_debit_of_exact_balance_leaves_zero(make_user):
    # SPEC P4: the guarded update allows reaching exactly zero.
    user = make_user(credits_usd=20)
    entry = debit(user, 20 * MICROS)
    assert entry.balance_after_micros == 0
    assert ledger_state(user) == (0, 0, 0, 2)


def test_debit_on_empty_account_is_refused_without_entry(make_user):
    # SPEC P4: balance may never go negative; a refused debit writes nothing.
    user = make_user()
    with pytest.raises(InsufficientCredits) as exc:
        debit(user, 1)
    assert exc.value.code == "insufficient_credits"
    assert ledger_state(user) == (0, 0, None, 0)


def test_refused_debit_rolls_back_with_the_callers_transaction(make_user):
    # SPEC P4: a failure inside the activation transaction leaves no debit behind.
    user = make_user(credits_usd=50)
    with pytest.raises(RuntimeError), transaction.atomic():
        debit(user, 20 * MICROS)
        raise RuntimeError("a later activation step failed")
    assert ledger_state(user)[:2] == (50 * MICROS, 50 * MICROS)


def test_database_refuses_a_negative_balance_even_without_the_guard(make_user):
    # DESIGN: the check constraint is the last guard against overdraft.
    user = make_user(credits_usd=1)
    with pytest.raises(IntegrityError), transaction.atomic():
        CreditAccount.objects.filter(user=user).update(balance_micros=-1)
    assert CreditAccount.objects.get(user=user).balance_micros == MICROS


@pytest.mark.parametrize(
    "amount_micros",
    [0, -MICROS, 5_000, MICROS + 1, 1_000_000 * MICROS + 10_000],
    ids=["zero", "negative", "half-cent", "sub-cent", "over-limit"],
)
def test_grant_refuses_bad_amounts_and_changes_nothing(make_user, amount_micros):
    # SPEC 0: customers see two-decimal USD, so grants are whole cents, positive and bounded.
    user = make_user(credits_usd=5)
    with pytest.raises(InvalidCreditAmount):
        grant_credits(
            user=user, amount_micros=amount_micros, actor="system:test", now=timezone.now()
        )
    assert ledger_state(user)[:2] == (5 * MICROS, 5 * MICROS)


def test_grant_records_reason_actor_and_audit_event(make_user):
    # SPEC O1: the grant writes an audit event in the same transaction.
    from adminops.models import AuditEvent

    user = make_user()
    entry = grant_credits(
        user=user, amount_micros=12_340_000, actor="staff:7", reason="Goodwill", now=timezone.now()
    )
    assert (entry.kind, entry.reason, entry.actor) == ("grant", "Goodwill", "staff:7")
    event = AuditEvent.objects.get(event_type="credits.granted", subject_id=str(entry.account_id))
    assert event.actor == "staff:7"
    assert event.new_values["amount_micros"] == 12_340_000
