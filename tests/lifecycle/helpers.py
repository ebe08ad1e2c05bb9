"""Shared set-up for the lifecycle, concurrency and SIGKILL tests.

`bulk_due_subscriptions` builds many due subscriptions quickly with bulk inserts, keeping every
invariant the services keep: each credit account's balance equals the sum of its ledger (a grant
and the purchase debit), the purchase is a charged term linked to its ledger entry, the
credential is `assigned` to the user, and the installed BYOK entry is linked.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.core import mail
from django.db import DatabaseError, connection, transaction
from django.db.models import Sum
from django.test import TestCase

from accounts.models import User
from billing.models import CreditAccount, LedgerEntry
from byok.models import ByokKey
from codingplans import crypto
from inventory.models import Credential
from subscriptions.models import ChargedTerm, Subscription, term_description
from subscriptions.purchase import purchase_plan

MICROS = 1_000_000
PLUS = "minimax-token-plan-plus"
MAX = "minimax-token-plan-max"
ULTRA = "minimax-token-plan-ultra"
PRICES = {PLUS: 20 * MICROS, MAX: 50 * MICROS, ULTRA: 120 * MICROS}

_keys = itertools.count(1)


def buy(user, now: datetime, plan_id: str = PLUS, key: str | None = None) -> Subscription:
    """A real purchase through the service (SPEC P4), its commit hooks run as a commit runs
    them: its receipt, written with it, is sent (else a later sweep finds it unsent and sends
    it, as after a crash). The receipt is left out of `mail.outbox`, which these tests read for
    the e-mails of what follows."""
    sent = len(mail.outbox)
    with TestCase.captureOnCommitCallbacks(execute=True):
        outcome = purchase_plan(
            user=user, plan_id=plan_id, idempotency_key=key or uuid.uuid4().hex, now=now
        )
    mail.outbox[sent:] = [m for m in mail.outbox[sent:] if not m.subject.startswith("Receipt:")]
    return Subscription.objects.get(pk=outcome.subscription_id)


def balance(user) -> int:
    return CreditAccount.objects.values_list("balance_micros", flat=True).get(user=user)


def ledger_sum(user) -> int:
    return (
        LedgerEntry.objects.filter(account__user=user).aggregate(s=Sum("amount_micros"))["s"] or 0
    )


@dataclass(frozen=True)
class BulkSubscription:
    id: int
    user_id: int
    funded: bool
    due_at: datetime


def bulk_due_subscriptions(
    n: int,
    *,
    due_at: datetime,
    funded,
    plan_id: str = PLUS,
    spread: timedelta = timedelta(0),
) -> list[BulkSubscription]:
    """`n` active subscriptions, one per new user, due at `due_at` (+ i * spread).

    `funded(i)` says whether user i can pay exactly one renewal: funded accounts hold the
    price after the purchase, the others $5.
    """
    price = PRICES[plan_id]
    tag = uuid.uuid4().hex[:8]
    purchased_at = due_at - timedelta(days=30)
    users = User.objects.bulk_create(
        [
            User(email=f"bulk-{tag}-{i}@example.com", password="!", date_joined=purchased_at)
            for i in range(n)
        ]
    )
    flags = [bool(funded(i)) for i in range(n)]
    grants = [price + (price if flags[i] else 5 * MICROS) for i in range(n)]
    accounts = CreditAccount.objects.bulk_create(
        [
            CreditAccount(
                user=u,
                balance_micros=grants[i] - price,
                created_at=purchased_at,
                updated_at=purchased_at,
            )
            for i, u in enumerate(users)
        ]
    )
    LedgerEntry.objects.bulk_create(
        [
            LedgerEntry(
                account=a,
                kind=LedgerEntry.Kind.GRANT,
                amount_micros=grants[i],
                balance_after_micros=grants[i],
                actor="system:test",
                created_at=purchased_at,
            )
            for i, a in enumerate(accounts)
        ]
    )
    purchases = LedgerEntry.objects.bulk_create(
        [
            LedgerEntry(
                account=a,
                kind=LedgerEntry.Kind.PURCHASE,
                amount_micros=-price,
                balance_after_micros=grants[i] - price,
                actor=f"user:{users[i].pk}",
                created_at=purchased_at,
            )
            for i, a in enumerate(accounts)
        ]
    )
    plaintexts = [f"sk-bulk-{tag}-{next(_keys):07d}" for _ in range(n)]
    credentials = Credential.objects.bulk_create(
        [
            Credential(
                plan_id=plan_id,
                state=Credential.State.ASSIGNED,
                encrypted_key=crypto.encrypt(key),
                fingerprint=crypto.fingerprint(key),
                upstream_plan_id=f"up-{key}",
                assigned_to=users[i],
                holder_ref=f"h{users[i].pk}",
                created_at=purchased_at,
                assigned_at=purchased_at,
            )
            for i, key in enumerate(plaintexts)
        ]
    )
    subs = Subscription.objects.bulk_create(
        [
            Subscription(
                user=users[i],
                plan_id=plan_id,
                provider_id="minimax",
                status=Subscription.Status.ACTIVE,
                price_micros=price,
                billing_period_days=30,
                credential=credentials[i],
                current_period_start=purchased_at + i * spread,
                current_period_end=due_at + i * spread,
                created_at=purchased_at + i * spread,
                updated_at=purchased_at,
            )
            for i in range(n)
        ]
    )
    ChargedTerm.objects.bulk_create(
        [
            ChargedTerm(
                subscription=s,
                amount_micros=price,
                period_start=s.current_period_start,
                period_end=s.current_period_end,
                charged_at=purchased_at,
                description=term_description(
                    "Token Plan Plus", "purchase", s.current_period_start, s.current_period_end
                ),
                ledger_entry=purchases[i],
            )
            for i, s in enumerate(subs)
        ]
    )
    LedgerEntry.objects.bulk_update(
        [
            _with_reference(entry, f"subscription:{s.pk}")
            for entry, s in zip(purchases, subs, strict=True)
        ],
        ["reference"],
    )
    ByokKey.objects.bulk_create(
        [
            ByokKey(
                user=users[i],
                provider_id="minimax",
                encrypted_key=credentials[i].encrypted_key,
                key_hint=crypto.key_hint(plaintexts[i]),
                managed_by=ByokKey.ManagedBy.CODING_PLAN,
                subscription=s,
                created_at=purchased_at,
                updated_at=purchased_at,
            )
            for i, s in enumerate(subs)
        ]
    )
    return [
        BulkSubscription(s.pk, s.user_id, flags[i], s.current_period_end)
        for i, s in enumerate(subs)
    ]


def _with_reference(entry: LedgerEntry, reference: str) -> LedgerEntry:
    entry.reference = reference
    return entry


def outcome_per_subscription(ids: list[int]) -> dict[int, dict[str, object]]:
    """For each subscription: status/reason, terms, renewal entries, credential state, whether
    its installed entry is still there — in a handful of queries."""
    rows = {
        sid: {
            "status": status,
            "reason": reason,
            "period_end": end,
            "credential_state": cstate,
            "credential_key_erased": ckey == "",
            "terms": 0,
            "renewals": 0,
            "installed_entry": False,
        }
        for sid, status, reason, end, cstate, ckey in Subscription.objects.filter(
            pk__in=ids
        ).values_list(
            "id",
            "status",
            "cancellation_reason",
            "current_period_end",
            "credential__state",
            "credential__encrypted_key",
        )
    }
    for sid in ChargedTerm.objects.filter(subscription_id__in=ids).values_list(
        "subscription_id", flat=True
    ):
        rows[sid]["terms"] += 1
    refs = {f"subscription:{sid}": sid for sid in ids}
    for ref in LedgerEntry.objects.filter(
        kind=LedgerEntry.Kind.RENEWAL, reference__in=list(refs)
    ).values_list("reference", flat=True):
        rows[refs[ref]]["renewals"] += 1
    for sid in ByokKey.objects.filter(subscription_id__in=ids).values_list(
        "subscription_id", flat=True
    ):
        rows[sid]["installed_entry"] = True
    return rows


def backends_on_this_database() -> set[int]:
    """The pids of the client sessions on the test database other than this connection's."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        return {pid for (pid,) in cursor.fetchall()}


def other_backends_on_this_database(before: set[int] = frozenset()) -> int:
    """Client sessions on the test database that were not there `before` (a killed child's,
    until PostgreSQL notices it is gone). Sessions an earlier test left idle in this process
    (an event loop's pool) are in `before` and not counted."""
    return len(backends_on_this_database() - set(before))


def relax_commit_durability() -> None:
    """Test databases need not survive a server crash: commit without waiting for the disk
    flush (`synchronous_commit = off`). Transaction semantics and locking are unchanged; each
    commit stops costing an fsync, which dominates the sweep's per-subscription time here.
    Applies to this connection and, through the database default, to every later one (threads,
    the SIGKILL test's child process)."""
    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit TO off")
        name = connection.ops.quote_name(connection.settings_dict["NAME"])
        try:
            with transaction.atomic():
                cursor.execute(f"ALTER DATABASE {name} SET synchronous_commit TO off")
        except DatabaseError:  # not the database's owner: this connection only
            pass
