"""Every balance change goes through `post_entry`: the ledger entry and the balance move together.

Debits use a guarded UPDATE (`balance >= amount`), so two concurrent debits can never overdraw
an account even before the row lock is considered; the check constraint is the last guard.
"""

from __future__ import annotations

import inspect
from datetime import datetime
from typing import Any

from django.db import transaction

from adminops.audit import record_event
from billing.errors import (
    AdjustmentTooLarge,
    AutoTopUpNeedsCard,
    AutoTopUpUnavailable,
    InsufficientCredits,
    InvalidCreditAmount,
    ReasonRequired,
)
from billing.models import CreditAccount, LedgerEntry, TopUpAttempt
from codingplans import sql as sql_helpers
from codingplans.money import display_usd

MAX_GRANT_MICROS = 1_000_000 * 1_000_000  # $1,000,000: a typo guard for operators
CENT_MICROS = 10_000  # customers see two decimals, so operators grant whole cents (SPEC 0, 11.1)


def open_credit_account(*, user, now: datetime) -> CreditAccount:
    account, _ = CreditAccount.objects.get_or_create(
        user=user, defaults={"created_at": now, "updated_at": now}
    )
    return account


def lock_credit_account(*, user_id: int) -> int | None:
    """Lock a user's credit account row (first in the lock order) inside the caller's
    transaction; returns its balance, which cannot change under the lock, or None when the
    user has no account. One lean statement: the sweep and the purchase take it every time."""
    row = sql_helpers.execute(
        f"SELECT balance_micros FROM {sql_helpers.table(CreditAccount)} "  # noqa: S608 - table name from the model
        "WHERE user_id = %s FOR UPDATE",
        [user_id],
    )
    return None if row is None else row.balance_micros


def account_lock_cte(name: str) -> str:
    """`lock_credit_account` as a `name AS MATERIALIZED (…)` common table expression (one
    parameter, %(user_id)s), for a statement that takes this lock and then locks rows of its
    own in the same round trip (the sweep takes both locks for every due subscription). The
    lock order holds only if the statement reads `name` in a condition on none of its own rows,
    e.g. `(SELECT count(*) FROM name) >= 0`: PostgreSQL evaluates such a condition once, before
    it scans (and locks) any row; MATERIALIZED keeps the lock from being folded away."""
    return (
        f"{name} AS MATERIALIZED (SELECT balance_micros FROM "  # noqa: S608 - names from our code
        f"{sql_helpers.table(CreditAccount)} WHERE user_id = %(user_id)s FOR UPDATE)"
    )


def entry_ctes(*, debit: bool) -> str:
    """The `account` and `entry` common table expressions: the balance change (guarded, for a
    debit: never below zero) and the ledger entry explaining it, for a statement that may do
    more in the same round trip (the purchase's activation). Parameters: %(amount)s (signed),
    %(debit)s, %(user_id)s, %(kind)s, %(reason)s, %(actor)s, %(reference)s, %(now)s. `entry`
    is empty when there is no account or a debit exceeds the balance."""
    return _ENTRY_CTES.format(
        account=sql_helpers.table(CreditAccount),
        entry=sql_helpers.table(LedgerEntry),
        guard=" AND balance_micros >= %(debit)s" if debit else "",
    )


_ENTRY_CTES = """
    account AS (
        UPDATE {account} SET balance_micros = balance_micros + %(amount)s, updated_at = %(now)s
        WHERE user_id = %(user_id)s{guard}
        RETURNING id, balance_micros
    ),
    entry AS (
        INSERT INTO {entry} (account_id, kind, amount_micros, balance_after_micros, reason,
                             actor, reference, created_at)
        SELECT id, %(kind)s, %(amount)s, balance_micros, %(reason)s, %(actor)s, %(reference)s,
               %(now)s
        FROM account
        RETURNING id, account_id, balance_after_micros
    )
"""


def _apply_entry(
    *, user_id: int, amount_micros: int, kind: str, actor: str, reason: str, reference: str, now
) -> Any:
    """One statement: the guarded balance change (never below zero) and its ledger entry, or
    nothing at all. Returns the entry's row (`id`, `account_id`, `balance_after_micros`), or None
    when there is no account or a debit exceeds the balance. One round trip instead of two
    (issue 8)."""
    statement = f"WITH {entry_ctes(debit=amount_micros < 0)} SELECT * FROM entry"  # noqa: S608 - our own SQL
    return sql_helpers.execute(
        statement,
        {
            "amount": amount_micros,
            "debit": -amount_micros,
            "now": now,
            "user_id": user_id,
            "kind": kind,
            "reason": reason,
            "actor": actor,
            "reference": reference,
        },
    )


def post_entry(
    *,
    user=None,
    user_id: int | None = None,
    amount_micros: int,
    kind: str,
    actor: str,
    now: datetime,
    reason: str = "",
    reference: str = "",
) -> LedgerEntry:
    """Apply a signed amount to the user's balance and append the ledger entry explaining it.

    Must run inside the caller's transaction (a purchase debits, claims stock and creates the
    subscription atomically). A debit larger than the balance raises InsufficientCredits and
    changes nothing — and leaves the transaction usable, so callers need no savepoint. Pass the
    `user` or, where only the id is at hand (the sweep), `user_id`.
    """
    uid = user.pk if user is not None else user_id
    if uid is None:
        raise TypeError("post_entry needs user or user_id")
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("post_entry must run inside a transaction")
    values = {
        "kind": kind,
        "amount_micros": amount_micros,
        "reason": reason[:255],
        "actor": actor,
        "reference": reference[:100],
        "created_at": now,
    }

    def apply() -> Any:
        return _apply_entry(
            user_id=uid,
            amount_micros=amount_micros,
            kind=kind,
            actor=actor,
            reason=values["reason"],
            reference=values["reference"],
            now=now,
        )

    row = apply()
    # A credit opens the account if need be; a debit never does (there is nothing to debit).
    if row is None and amount_micros > 0:
        CreditAccount.objects.get_or_create(
            user_id=uid, defaults={"created_at": now, "updated_at": now}
        )
        row = apply()
    if row is None:
        raise InsufficientCredits()
    entry = LedgerEntry(
        id=row.id,
        account_id=row.account_id,
        balance_after_micros=row.balance_after_micros,
        **values,
    )
    entry._state.adding = False
    return entry


def grant_credits(
    *, user, amount_micros: int, actor: str, now: datetime, reason: str = ""
) -> LedgerEntry:
    """Add credits (an operator grant or a demo seed): a ledger entry, never a bare balance edit."""
    if amount_micros <= 0 or amount_micros > MAX_GRANT_MICROS or amount_micros % CENT_MICROS:
        raise InvalidCreditAmount()
    with transaction.atomic(durable=True):
        entry = post_entry(
            user=user,
            amount_micros=amount_micros,
            kind=LedgerEntry.Kind.GRANT,
            actor=actor,
            now=now,
            reason=reason or "Credit grant",
        )
        record_event(
            actor=actor,
            subject=entry.account,
            event_type="credits.granted",
            now=now,
            new={
                "amount_micros": amount_micros,
                "balance_after_micros": entry.balance_after_micros,
            },
        )
    return entry


def adjust_credits(
    *, user, amount_micros: int, reason: str, actor: str, now: datetime
) -> LedgerEntry:
    """Staff grant (positive) or remove (negative) credits with a reason (SPEC M6): one
    `adjustment` entry and an audit event naming the staff member. A removal never takes the
    balance below zero: it is refused (AdjustmentTooLarge, saying the most that can be
    removed) and nothing changes."""
    reason = (reason or "").strip()
    if not reason:
        raise ReasonRequired()
    if amount_micros == 0 or abs(amount_micros) > MAX_GRANT_MICROS or amount_micros % CENT_MICROS:
        raise InvalidCreditAmount()
    with transaction.atomic(durable=True):
        open_credit_account(user=user, now=now)
        balance = lock_credit_account(user_id=user.pk) or 0
        if amount_micros < 0 and -amount_micros > balance:
            raise AdjustmentTooLarge(
                f"A removal cannot take the balance below zero: at most "
                f"{display_usd(balance)} can be removed."
            )
        entry = post_entry(
            user=user,
            amount_micros=amount_micros,
            kind=LedgerEntry.Kind.ADJUSTMENT,
            actor=actor,
            now=now,
            reason=reason,
            reference=f"user:{user.pk}",
        )
        record_event(
            actor=actor,
            subject=("billing.creditaccount", entry.account_id),
            event_type="credits.adjusted",
            now=now,
            old={"balance_micros": balance},
            new={
                "amount_micros": amount_micros,
                "balance_micros": entry.balance_after_micros,
                "reason": reason[:255],
                "ledger_entry_id": entry.pk,
            },
        )
    return entry


def debit_refund(
    *, user_id: int, amount_micros: int, refund_id: int, actor: str, now: datetime, reason: str
) -> LedgerEntry:
    """A card refund's debit (SPEC M5), inside the caller's transaction after it locked the
    credit account: one negative `refund` entry (reference `refund:<id>`, unique). Raises
    InsufficientCredits when the balance is short: credits already spent are not refunded."""
    if amount_micros <= 0 or amount_micros % CENT_MICROS:
        raise InvalidCreditAmount()
    return post_entry(
        user_id=user_id,
        amount_micros=-amount_micros,
        kind=LedgerEntry.Kind.REFUND,
        actor=actor,
        now=now,
        reason=reason,
        reference=f"refund:{refund_id}",
    )


def reverse_refund(
    *, user_id: int, amount_micros: int, refund_id: int, actor: str, now: datetime
) -> LedgerEntry:
    """A refund the processor failed puts the credits back (SPEC M5): one `refund_reversed`
    entry per refund (reference `refund:<id>`, unique), inside the caller's transaction."""
    return post_entry(
        user_id=user_id,
        amount_micros=amount_micros,
        kind=LedgerEntry.Kind.REFUND_REVERSED,
        actor=actor,
        now=now,
        reason="Refund failed at the card processor; credits put back",
        reference=f"refund:{refund_id}",
    )


def set_auto_top_up(
    *, user, enabled: bool, amount_micros: int, actor: str, now: datetime
) -> CreditAccount:
    if amount_micros <= 0 or amount_micros > 10_000 * 1_000_000 or amount_micros % CENT_MICROS:
        raise InvalidCreditAmount("The top-up amount must be between $0.01 and $10,000.00.")
    from billing.topup import can_charge, top_up_available

    if enabled and not top_up_available():
        # SPEC M7: no processor configured, so turning it on would promise what cannot happen
        # (and must never fall back to a backend that approves without payment).
        raise AutoTopUpUnavailable()
    with transaction.atomic(durable=True):
        open_credit_account(user=user, now=now)
        account = CreditAccount.objects.select_for_update().get(user=user)
        if (account.auto_top_up_enabled, account.auto_top_up_amount_micros) == (
            enabled,
            amount_micros,
        ):
            return account  # saving the same settings again is a no-op: no write, no audit event
        if enabled and not can_charge(user.pk):
            # SPEC M4: the stripe backend charges the saved card; without one, nothing could be
            # charged. Checked under the account lock, which removing the card also takes.
            raise AutoTopUpNeedsCard()
        old = {
            "enabled": account.auto_top_up_enabled,
            "amount_micros": account.auto_top_up_amount_micros,
        }
        account.auto_top_up_enabled = enabled
        account.auto_top_up_amount_micros = amount_micros
        account.updated_at = now
        account.save(
            update_fields=["auto_top_up_enabled", "auto_top_up_amount_micros", "updated_at"]
        )
        record_event(
            actor=actor,
            subject=account,
            event_type="credits.auto_top_up_changed",
            now=now,
            old=old,
            new={"enabled": enabled, "amount_micros": amount_micros},
        )
    return account


def turn_off_auto_top_up(*, user_id: int, actor: str, now: datetime, why: str) -> bool:
    """Inside the caller's transaction, after it locked the credit account (removing the saved
    card, SPEC M4): auto top-up off, audited. Returns whether it was on."""
    account = CreditAccount.objects.filter(user_id=user_id, auto_top_up_enabled=True).first()
    if account is None:
        return False
    account.auto_top_up_enabled = False
    account.updated_at = now
    account.save(update_fields=["auto_top_up_enabled", "updated_at"])
    record_event(
        actor=actor,
        subject=account,
        event_type="credits.auto_top_up_changed",
        now=now,
        old={"enabled": True},
        new={"enabled": False, "why": why},
    )
    return True


def start_top_up(
    *,
    account: CreditAccount,
    subscription_id: int,
    due_at: datetime,
    now: datetime,
    price_micros: int = 0,
):
    """Record a pending top-up attempt for one due term, inside the sweep's transaction (the
    credit account is locked, so `account.balance_micros` is current); the processor is called
    once that transaction has committed (`charge_top_up_after_commit`). The amount is SPEC M4's:
    the larger of the configured amount and the shortfall for the renewal (`price_micros`),
    rounded up to whole dollars. Returns None when this term already had one (L4), no backend
    is configured (M7: no attempt, never a free grant) or the backend cannot charge this
    customer (M4: no saved card → no attempt)."""
    from billing.topup import can_charge, get_backend, top_up_amount, top_up_available

    if not top_up_available() or not can_charge(account.user_id):
        return None
    values = {
        "account_id": account.pk,
        "subscription_id": subscription_id,
        "due_at": due_at,
        "amount_micros": top_up_amount(
            configured_micros=account.auto_top_up_amount_micros,
            price_micros=price_micros,
            balance_micros=account.balance_micros,
        ),
        "backend": get_backend().name,
        "status": TopUpAttempt.Status.PENDING,
        "decline_code": "",
        "reference": "",
        "action_url": "",
        "created_at": now,
    }
    # One lean INSERT … ON CONFLICT DO NOTHING on the one-attempt-per-due-term constraint, not
    # a look-up and an ORM create: the sweep starts one for every short subscription (issue 20).
    attempt_id = sql_helpers.insert_unless_conflict(TopUpAttempt, **values)
    if attempt_id is None:  # this term already had its attempt (L4)
        return None
    charge_top_up_after_commit(attempt_id=attempt_id, now=now)
    attempt = TopUpAttempt(id=attempt_id, **values)
    attempt._state.adding = False
    return attempt


def top_up_blocker(*, user_id: int) -> str:
    """Why the sweep started no attempt for a customer with auto top-up on, for the past-due
    e-mail: `unavailable` (no backend, M7) or `no_card` (M4), else ``."""
    from billing.topup import can_charge, top_up_available

    if not top_up_available():
        return "unavailable"
    return "" if can_charge(user_id) else "no_card"


def charge_top_up_after_commit(*, attempt_id: int, now: datetime) -> None:
    """Queue the processor call for when the caller's transaction commits (DESIGN: record the
    intent, commit, call, record the outcome). Through a Celery task, so a slow processor
    holds neither a row lock nor the sweep. robust: a broker or processor failure is logged,
    not raised out of the sweep's commit (which would count a subscription already moved to
    past_due as a sweep error); the attempt then stays pending and the next sweep within grace
    charges it again (SPEC L4, S5)."""
    from billing.tasks import charge_top_up

    transaction.on_commit(
        lambda: charge_top_up.delay(attempt_id=attempt_id, now=now.isoformat()), robust=True
    )


def execute_top_up(*, attempt_id: int, now: datetime) -> None:
    """Charge a pending attempt through the backend, then record the outcome (S5, M4).

    The processor is called with no transaction open and no row lock held: a slow processor
    must not block the customer's purchases or the sweep (issue 13 item 8). The backend is
    idempotent on the attempt id and `record_top_up_outcome` settles an attempt once, so
    running this twice (a re-delivered task, a sweep retrying a pending attempt) is harmless."""
    from billing.models import TopUpAttempt
    from billing.topup import get_backend, top_up_available

    if not top_up_available():
        return  # M7: no processor configured; the attempt stays pending, nothing is granted
    row = (
        TopUpAttempt.objects.filter(pk=attempt_id, status=TopUpAttempt.Status.PENDING)
        .values_list("account__user_id", "amount_micros")
        .first()
    )
    if row is None:
        return
    user_id, amount_micros = row
    charge = get_backend().charge
    extra = {"now": now} if "now" in inspect.signature(charge).parameters else {}
    # A backend that takes `now` gets the sweep's clock (the stripe backend dates its card
    # payment with it and judges whether an earlier charge may still be in flight).
    result = charge(attempt_id=attempt_id, user_id=user_id, amount_micros=amount_micros, **extra)
    record_top_up_outcome(attempt_id=attempt_id, result=result, now=now)


def record_top_up_outcome(*, attempt_id: int, result, now: datetime) -> bool:
    """Settle an attempt with the processor's answer, in one short transaction (see
    `apply_top_up_outcome`). Lock order: credit account, then the attempt."""
    from billing.models import TopUpAttempt

    with transaction.atomic(durable=True):
        user_id = (
            TopUpAttempt.objects.filter(pk=attempt_id)
            .values_list("account__user_id", flat=True)
            .first()
        )
        if user_id is None:
            return False
        lock_credit_account(user_id=user_id)
        return apply_top_up_outcome(
            attempt_id=attempt_id, result=result, actor="system:sweep", now=now
        )


def apply_top_up_outcome(*, attempt_id: int, result, actor: str, now: datetime) -> bool:
    """Inside the caller's transaction, after it locked the credit account: move an open attempt
    (pending, or waiting for the customer's authentication) to what the processor says.
    Approved credits the account once (`top_up`, S5; reference `result.ledger_reference` — the
    PaymentIntent for a card, unique among card credits — else `top_up:<id>`); declined writes
    a zero-amount `top_up_declined` entry with the code and changes no balance; requires_action
    records where the customer completes it; pending changes nothing. An attempt already
    settled (or already in that state) is left alone (returns False), so a repeated or
    concurrent recording never grants twice. Announces the change after commit
    (`billing.signals.top_up_settled`)."""
    from billing.models import TopUpAttempt
    from billing.signals import top_up_settled

    Status = TopUpAttempt.Status
    attempt = (
        TopUpAttempt.objects.select_for_update(of=("self",))
        .filter(pk=attempt_id, status__in=[Status.PENDING, Status.REQUIRES_ACTION])
        .select_related("account")
        .first()
    )
    if attempt is None or result.pending:
        return False  # settled by an earlier or concurrent recording, or nothing to record
    if result.requires_action and attempt.status == Status.REQUIRES_ACTION:
        return False
    user_id = attempt.account.user_id
    reference = f"top_up:{attempt.pk}"
    old = attempt.status
    fields = ["status", "reference", "decline_code", "action_url"]
    if result.approved:
        entry = post_entry(
            user_id=user_id,
            amount_micros=attempt.amount_micros,
            kind=LedgerEntry.Kind.TOP_UP,
            actor=actor,
            now=now,
            reason="Automatic top-up for a plan renewal",
            reference=result.ledger_reference or reference,
        )
        attempt.status = Status.APPROVED
        attempt.decline_code = ""
    elif result.requires_action:
        entry = None
        attempt.status = Status.REQUIRES_ACTION
        attempt.action_url = result.action_url[:200]
    else:
        code = (result.decline_reason or "card_declined")[:100]
        entry = post_entry(
            user_id=user_id,
            amount_micros=0,
            kind=LedgerEntry.Kind.TOP_UP_DECLINED,
            actor=actor,
            now=now,
            reason=f"Automatic top-up declined ({code})",
            reference=reference,
        )
        attempt.status = Status.DECLINED
        attempt.decline_code = code
    if result.reference:
        attempt.reference = result.reference[:100]
    if entry is not None:
        attempt.ledger_entry = entry
        attempt.resolved_at = now
        fields += ["ledger_entry", "resolved_at"]
    attempt.save(update_fields=fields)
    record_event(
        actor=actor,
        subject=attempt,
        event_type=f"top_up.{attempt.status}",
        now=now,
        old={"status": old},
        new={
            "status": attempt.status,
            "amount_micros": attempt.amount_micros,
            "subscription_id": attempt.subscription_id,
            **({"decline_code": attempt.decline_code} if attempt.decline_code else {}),
        },
    )
    status = attempt.status
    transaction.on_commit(
        lambda: top_up_settled.send(sender=TopUpAttempt, attempt_id=attempt_id, status=status),
        robust=True,
    )
    return True


CARD_PAYMENT_MIN_MICROS = 5 * 1_000_000  # SPEC M1: $5 to $1,000 per payment, whole cents
CARD_PAYMENT_MAX_MICROS = 1_000 * 1_000_000


def grant_card_payment(
    *,
    user_id: int,
    amount_micros: int,
    reference: str,
    actor: str,
    now: datetime,
    reason: str = "Paid by card",
) -> LedgerEntry:
    """Credit a succeeded card payment (SPEC M1, M2) inside the caller's transaction: one
    `card_payment` entry. `reference` names the processor's payment (`stripe_pi:<id>`); the
    partial unique index on it makes a second grant for one payment fail (IntegrityError) even
    if a caller's own check were bypassed."""
    if (
        not CARD_PAYMENT_MIN_MICROS <= amount_micros <= CARD_PAYMENT_MAX_MICROS
        or amount_micros % CENT_MICROS
        or not reference
    ):
        raise InvalidCreditAmount()
    entry = post_entry(
        user_id=user_id,
        amount_micros=amount_micros,
        kind=LedgerEntry.Kind.CARD_PAYMENT,
        actor=actor,
        now=now,
        reason=reason,
        reference=reference,
    )
    # The caller's audit event (the payment's `card_payment.succeeded`) names this entry.
    return entry


def forfeit_balance(*, user_id: int, actor: str, now: datetime) -> LedgerEntry | None:
    """Account deletion with a positive balance (SPEC M10): a `forfeited` entry that brings
    the balance to zero, inside the deletion's transaction (the account row is locked here,
    first in the lock order). Returns None when there is nothing to forfeit."""
    balance = lock_credit_account(user_id=user_id)
    if not balance:
        return None
    entry = post_entry(
        user_id=user_id,
        amount_micros=-balance,
        kind=LedgerEntry.Kind.FORFEITED,
        actor=actor,
        now=now,
        reason="Balance forfeited when the account was deleted",
        reference=f"user:{user_id}",
    )
    record_event(
        actor=actor,
        subject=("billing.creditaccount", entry.account_id),
        event_type="credits.forfeited",
        now=now,
        old={"balance_micros": balance},
        new={"balance_micros": 0},
    )
    return entry


def grant_service_credit(
    *, user_id: int, amount_micros: int, reference: str, actor: str, now: datetime, reason: str
) -> LedgerEntry | None:
    """A service credit (SPEC H4): the days a plan's dead key cost the customer, inside the
    caller's transaction (after its credit account lock), at most once per `reference` (one
    credential problem; a partial unique index holds it too). Returns None when that problem
    was already credited or there is nothing to credit. Audited by the caller."""
    if amount_micros <= 0:
        return None
    credited = LedgerEntry.objects.filter(kind=LedgerEntry.Kind.SERVICE_CREDIT, reference=reference)
    if credited.exists():
        return None
    return post_entry(
        user_id=user_id,
        amount_micros=amount_micros,
        kind=LedgerEntry.Kind.SERVICE_CREDIT,
        actor=actor,
        now=now,
        reason=reason,
        reference=reference,
    )
