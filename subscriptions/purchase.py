"""The atomic purchase (SPEC P1–P7): a plan bought with credits in one transaction.

Lock order everywhere: credit account → subscription → credential → BYOK entry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache

from django.db import transaction

from accounts.errors import EmailUnverified
from accounts.models import User
from adminops.audit import actor_for, event_values, events_insert
from billing.errors import InsufficientCredits
from billing.models import LedgerEntry
from billing.services import entry_ctes, lock_credit_account, open_credit_account
from byok.models import ByokKey
from byok.services import installed_entry_cte, installed_entry_params
from catalog import Plan, get_plan
from codingplans import sql
from inventory.alerts import check_after_commit
from inventory.services import ClaimedCredential, claim_cte, claim_params, claimed_credential
from subscriptions import emails
from subscriptions.errors import (
    AccountInactive,
    IdempotencyKeyMissing,
    IdempotencyKeyReused,
    PlanNotFound,
    ProviderSlotOccupied,
    SoldOut,
    SubscriptionExists,
)
from subscriptions.models import (
    LIVE_STATUSES,
    AvailabilityIntent,
    ChargedTerm,
    PurchaseRequest,
    Subscription,
    term_description,
)
from subscriptions.selectors import in_field_order, subscription_json

MAX_IDEMPOTENCY_KEY_LENGTH = 255


@dataclass(frozen=True)
class Activated:
    receipt_id: int | None  # the receipt's e-mail row, written by the activation statement
    stock_check: bool  # the claim may have taken the plan to its low-stock threshold


@dataclass(frozen=True)
class PurchaseOutcome:
    status: int
    body: dict
    replayed: bool
    subscription_id: int


# The stored outcome and every refusal check (P3, P5), and in the same statement the claim
# (P4 step 3), made only when every check passes (issue 20: one round trip fewer). `state` is
# read once, before the claim looks at any row.
_STATE_SQL = """
    WITH state AS MATERIALIZED (
        SELECT request.plan_id AS previous_plan,
               request.response_status AS previous_status,
               request.response_body AS previous_body,
               request.subscription_id AS previous_subscription,
               COALESCE(buyer.is_active AND buyer.deleted_at IS NULL, false) AS active,
               buyer.email_verified_at IS NOT NULL AS verified,  -- issue 19, SPEC A2
               EXISTS (SELECT 1 FROM {subscription} WHERE user_id = %(user)s
                       AND provider_id = %(provider)s AND status IN ({live})) AS live,
               EXISTS (SELECT 1 FROM {byok} WHERE user_id = %(user)s
                       AND provider_id = %(provider)s) AS slot_taken,
               CASE WHEN request.id IS NULL THEN {next_subscription} END AS subscription_id,
               CASE WHEN request.id IS NULL THEN {next_byok} END AS byok_id
        FROM (SELECT 1) AS one
        LEFT JOIN {user} AS buyer ON buyer.id = %(user)s
        LEFT JOIN {request} AS request
            ON request.user_id = %(user)s AND request.idempotency_key = %(key)s
    ),
    {claim}
    SELECT * FROM state LEFT JOIN claimed ON true
"""

# The claim's condition: no stored outcome, and no refusal (the balance was checked under the
# account lock, in Python: %(funded)s).
_CLAIM_WHEN = """(SELECT previous_plan IS NULL AND active AND verified AND NOT live
    AND NOT slot_taken AND %(funded)s FROM state)"""

# P4 steps 2 and 4–7 in one statement: the debit and its ledger entry (billing's own CTEs),
# the subscription, the installed entry (byok's own CTE), the charged term, the intent cleared,
# two audit events (adminops's), the receipt's e-mail row (an outbox row: it commits with the
# purchase or not at all) and the stored outcome. Each app's rows are written by the
# fragment that app exports; this module writes only subscriptions' tables (issue 14). Foreign
# keys between these rows are checked at commit.
_ACTIVATE_SQL = """
    WITH {entry_ctes},
    subscription AS (
        INSERT INTO {subscription} (id, user_id, plan_id, provider_id, status, price_micros,
            billing_period_days, credential_id, current_period_start, current_period_end,
            cancel_at_period_end, created_at, updated_at)
        VALUES (%(subscription_id)s, %(user_id)s, %(plan_id)s, %(provider_id)s, %(status)s,
            %(debit)s, %(period_days)s, %(credential_id)s, %(now)s, %(period_end)s, false,
            %(now)s, %(now)s)
    ),
    {installed},
    term AS (
        INSERT INTO {term} (subscription_id, amount_micros, period_start, period_end,
            charged_at, description, ledger_entry_id)
        SELECT %(subscription_id)s, %(debit)s, %(now)s, %(period_end)s, %(now)s,
            %(description)s, id
        FROM entry
    ),
    intent AS (
        DELETE FROM {intent} WHERE user_id = %(user_id)s AND plan_id = %(plan_id)s
    ),
    {audit},
    {receipt},
    outcome AS (
        INSERT INTO {request} (user_id, idempotency_key, plan_id, subscription_id,
            response_status, response_body, created_at)
        VALUES (%(user_id)s, %(idempotency_key)s, %(plan_id)s, %(subscription_id)s, 201,
            %(body)s, %(now)s)
    )
    SELECT (SELECT id FROM entry) AS entry_id, (SELECT id FROM installed) AS installed_id,
        (SELECT id FROM receipt) AS receipt_id
"""


def purchase_plan(
    *, user, plan_id: object, idempotency_key: object, now: datetime
) -> PurchaseOutcome:
    """Buy a plan with credits in one transaction (P4): slot check, guarded debit, SKIP LOCKED
    claim, installed BYOK entry, charged term, active subscription, intent cleared.

    Any refusal raises before commit, so nothing is charged that would need a refund; a refused
    request stores nothing and a retry with the same key is judged afresh.

    Three statements: the account lock, one read of the stored outcome and every refusal check
    that also claims the credential when they pass, and one activation statement writing every
    row. Written one row per statement through the ORM a purchase took sixteen round trips and
    most of its time building SQL (issue 8: purchase throughput; docs/architecture.md).
    """
    if not isinstance(idempotency_key, str) or not idempotency_key.strip():
        raise IdempotencyKeyMissing()
    idempotency_key = idempotency_key.strip()
    if len(idempotency_key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise IdempotencyKeyMissing("The Idempotency-Key must be at most 255 characters.")
    plan = get_plan(plan_id)
    if plan is None:
        raise PlanNotFound()

    with transaction.atomic(durable=True):
        # Lock order: credit account first. The lock serializes all of one user's purchases:
        # requests sharing an idempotency key wait for the first and then find its stored
        # outcome (P3), and two plans bought at once resolve to one subscription and one
        # `subscription_exists`.
        balance = _lock_credit_account(user, now=now)
        # Read after the lock (a statement of its own, so with a snapshot taken after the
        # wait): an outcome stored, an account deleted or a plan bought meanwhile is seen here.
        state = sql.execute(
            _state_sql(plan.low_stock_threshold),
            {
                "user": user.pk,
                "key": idempotency_key,
                "provider": plan.provider_id,
                "funded": balance >= plan.price_micros,
                **claim_params(plan_id=plan.plan_id, user=user, now=now),
            },
        )
        if state.previous_plan is not None:
            if state.previous_plan != plan.plan_id:
                raise IdempotencyKeyReused()
            # Django's connections load jsonb as text (its JSONField decodes it), so do we.
            return PurchaseOutcome(
                state.previous_status,
                in_field_order(json.loads(state.previous_body)),
                True,
                state.previous_subscription,
            )
        if not state.active:
            raise AccountInactive()
        if not state.verified:  # issue 19, SPEC A2: after the idempotency checks (P5)
            raise EmailUnverified()
        if state.live:
            raise SubscriptionExists()
        if state.slot_taken:
            raise ProviderSlotOccupied.for_provider(plan.provider_name)
        if balance < plan.price_micros:
            raise InsufficientCredits()
        # Balance first, then stock: `insufficient_credits` wins over `sold_out` (P5).
        credential = claimed_credential(state, plan_id=plan.plan_id)
        if credential is None:
            raise SoldOut()
        body, written = _activate(
            user=user,
            plan=plan,
            credential=credential,
            idempotency_key=idempotency_key,
            subscription_id=state.subscription_id,
            byok_id=state.byok_id,
            now=now,
        )
        check_after_commit(plan_id=plan.plan_id, stock_check=written.stock_check, now=now)
        emails.deliver_after_commit(written.receipt_id)  # issue 19, SPEC E1
    return PurchaseOutcome(201, body, False, state.subscription_id)


@cache
def _state_sql(threshold: int) -> str:
    return _STATE_SQL.format(
        user=sql.table(User),
        subscription=sql.table(Subscription),
        byok=sql.table(ByokKey),
        request=sql.table(PurchaseRequest),
        claim=claim_cte("claimed", threshold=threshold, when=_CLAIM_WHEN),
        next_subscription=sql.next_id(Subscription),
        next_byok=sql.next_id(ByokKey),
        # Literals, not parameters: the prepared statement's generic plan can then use the
        # partial unique index on live subscriptions.
        live=", ".join(f"'{status}'" for status in LIVE_STATUSES),
    )


def _lock_credit_account(user, *, now: datetime) -> int:
    """Lock the buyer's credit account (opening it at a first purchase); returns the balance."""
    balance = lock_credit_account(user_id=user.pk)
    if balance is None:
        open_credit_account(user=user, now=now)
        balance = lock_credit_account(user_id=user.pk)
    return balance


def _activate(
    *,
    user,
    plan: Plan,
    credential: ClaimedCredential,
    idempotency_key: str,
    subscription_id: int,
    byok_id: int,
    now: datetime,
) -> tuple[dict, Activated]:
    """Steps 2 and 4–7 of P4, inside purchase_plan's transaction, under the account lock, after
    the balance check and the claim; returns the response body (S), also stored as the outcome,
    and what the commit hooks need.

    The credential was claimed with the checks so the one activation statement can name it;
    inside the one transaction the order cannot be observed. The ids of the subscription and
    its installed entry were drawn with the checks too, so the stored outcome is written in
    the same statement as the rows it describes."""
    period_end = now + timedelta(days=plan.billing_period_days)
    actor = actor_for(user)
    subscription = Subscription(
        id=subscription_id,
        user_id=user.pk,
        plan_id=plan.plan_id,
        provider_id=plan.provider_id,
        status=Subscription.Status.ACTIVE,
        price_micros=plan.price_micros,
        billing_period_days=plan.billing_period_days,
        credential_id=credential.id,
        current_period_start=now,
        current_period_end=period_end,
        cancel_at_period_end=False,
        created_at=now,
        updated_at=now,
    )
    body = subscription_json(subscription, byok_key_id=byok_id)
    audit, audit_params = events_insert(
        "audit",
        [
            event_values(
                actor=actor,
                subject=subscription,
                event_type="subscription.purchased",
                now=now,
                new={
                    "plan_id": plan.plan_id,
                    "status": subscription.status,
                    "price_micros": plan.price_micros,
                    "credential_id": credential.id,
                    "current_period_end": period_end.isoformat(),
                },
            ),
            event_values(
                actor=actor,
                subject=("inventory.credential", credential.id),
                event_type="credential.assigned",
                now=now,
                old={"state": "available"},
                new={"state": "assigned", "subscription_id": subscription_id},
            ),
        ],
    )
    written = sql.execute(
        _activate_sql(audit),
        {
            # billing.entry_ctes: the guarded debit and its ledger entry
            "amount": -plan.price_micros,
            "debit": plan.price_micros,
            "user_id": user.pk,
            "kind": LedgerEntry.Kind.PURCHASE,
            "reason": f"{plan.name} — first {plan.billing_period_days} days",
            "actor": actor,
            "reference": f"subscription:{subscription_id}",
            "now": now,
            # the subscription, its installed entry, the term and the stored outcome
            "subscription_id": subscription_id,
            "plan_id": plan.plan_id,
            "provider_id": plan.provider_id,
            "status": subscription.status,
            "period_days": plan.billing_period_days,
            "credential_id": credential.id,
            "period_end": period_end,
            "byok_id": byok_id,
            **installed_entry_params(credential.encrypted_key),
            "description": term_description(plan.name, "purchase", now, period_end),
            "idempotency_key": idempotency_key,
            "body": sql.prepared_value(PurchaseRequest, "response_body", body),
            **audit_params,
            **emails.record_params("receipt", emails.PURCHASE_RECEIPT, subscription_id),
        },
    )
    if written.entry_id is None:
        # Cannot happen under the account lock after the balance check; the guard still holds.
        raise InsufficientCredits()
    if written.installed_id is None:
        # The customer added their own key after our slot check: the whole purchase rolls back.
        raise ProviderSlotOccupied.for_provider(plan.provider_name)
    return body, Activated(receipt_id=written.receipt_id, stock_check=credential.stock_check)


@cache
def _activate_sql(audit: str) -> str:
    return _ACTIVATE_SQL.format(
        entry_ctes=entry_ctes(debit=True),
        subscription=sql.table(Subscription),
        installed=installed_entry_cte("installed"),
        term=sql.table(ChargedTerm),
        intent=sql.table(AvailabilityIntent),
        request=sql.table(PurchaseRequest),
        audit=audit,
        receipt=emails.record_cte("receipt", source="entry"),
    )
