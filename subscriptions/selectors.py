"""Reads for the Subscription Center and the API."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any

from django.db.models import Q, QuerySet

from byok.models import ByokKey
from catalog import Plan, all_plans, get_plan
from codingplans.money import format_usd
from inventory.models import Credential
from subscriptions.errors import InvalidCursor, SubscriptionNotFound
from subscriptions.models import LIVE_STATUSES, AvailabilityIntent, ChargedTerm, Subscription

CHARGES_PAGE_SIZE = 20


# -- "due": the one definition (SPEC L1), for the sweep, the admin's filter and the admin home --


def due_subscriptions(now: datetime, *, among: QuerySet | None = None) -> QuerySet:
    """Subscriptions the sweep acts on at `now`: live, and their paid period has ended (the
    period end itself is due). `among` narrows a queryset of the caller's (the admin's)."""
    rows = Subscription.objects.all() if among is None else among
    return rows.filter(status__in=LIVE_STATUSES, current_period_end__lte=now)


def is_due(subscription: Subscription, *, now: datetime) -> bool:
    """`due_subscriptions` for one row already in memory (the sweep re-checks it under its
    lock). Kept next to the query it mirrors; tests/subscriptions/test_due.py holds them equal."""
    return subscription.is_live and subscription.current_period_end <= now


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z, as the API shows times."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def plan_name(plan_id: str) -> str:
    plan = get_plan(plan_id)
    return plan.name if plan else plan_id


# The S object's fields, in the order responses list them.
SUBSCRIPTION_FIELDS = (
    "id",
    "plan_id",
    "provider_id",
    "name",
    "status",
    "price_usd",
    "billing_period_days",
    "payment_source",
    "current_period_start",
    "current_period_end",
    "cancel_at_period_end",
    "grace_deadline",
    "canceled_at",
    "cancellation_reason",
    "byok_key_id",
)


def in_field_order(body: dict) -> dict:
    """A stored S back in its original key order. PostgreSQL's jsonb does not keep key order, so
    without this an idempotent replay (P3) would be equal as JSON but not byte-identical."""
    ordered = {name: body[name] for name in SUBSCRIPTION_FIELDS if name in body}
    ordered.update((name, value) for name, value in body.items() if name not in ordered)
    return ordered


def subscription_json(subscription: Subscription, *, byok_key_id: int | Any | None = ...) -> dict:
    """The S object of SPEC 11.1, keys in SUBSCRIPTION_FIELDS order."""
    if byok_key_id is ...:
        byok_key_id = (
            ByokKey.objects.filter(subscription=subscription).values_list("id", flat=True).first()
        )
    return {
        "id": subscription.pk,
        "plan_id": subscription.plan_id,
        "provider_id": subscription.provider_id,
        "name": plan_name(subscription.plan_id),
        "status": subscription.status,
        "price_usd": format_usd(subscription.price_micros),
        "billing_period_days": subscription.billing_period_days,
        "payment_source": "Credits",
        "current_period_start": iso(subscription.current_period_start),
        "current_period_end": iso(subscription.current_period_end),
        "cancel_at_period_end": subscription.cancel_at_period_end,
        "grace_deadline": iso(subscription.grace_deadline),
        "canceled_at": iso(subscription.canceled_at),
        "cancellation_reason": subscription.cancellation_reason,
        "byok_key_id": byok_key_id,
    }


def subscriptions_for(user, *, include_terminal: bool = False) -> list[Subscription]:
    """Live first, then newest; one query with the installed entry joined."""
    rows = Subscription.objects.filter(user=user).select_related("installed_entry")
    if not include_terminal:
        rows = rows.filter(status__in=LIVE_STATUSES)
    return sorted(rows.order_by("-created_at", "-id"), key=lambda s: s.status not in LIVE_STATUSES)


def installed_entry(subscription: Subscription) -> ByokKey | None:
    """The still-linked installed BYOK entry (B3), if any."""
    try:
        return subscription.installed_entry
    except ByokKey.DoesNotExist:
        return None


def installed_entry_id(subscription: Subscription) -> int | None:
    entry = installed_entry(subscription)
    return entry.pk if entry else None


def provider_name(provider_id: str) -> str:
    from catalog import provider_name

    return provider_name(provider_id)


def subscriptions_json(user, *, include_terminal: bool = False) -> list[dict]:
    return [
        subscription_json(s, byok_key_id=installed_entry_id(s))
        for s in subscriptions_for(user, include_terminal=include_terminal)
    ]


def subscription_for(user, subscription_id: int) -> Subscription:
    """The caller's subscription, or 404 — another user's id looks exactly like a missing one."""
    subscription = (
        Subscription.objects.filter(user=user, pk=subscription_id)
        .select_related("installed_entry")
        .first()
    )
    if subscription is None:
        raise SubscriptionNotFound()
    return subscription


def _encode_cursor(term: ChargedTerm) -> str:
    raw = f"{term.period_start.timestamp():.6f}:{term.pk}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        stamp, _, pk = base64.urlsafe_b64decode(padded.encode()).decode().partition(":")
        return datetime.fromtimestamp(float(stamp), tz=UTC), int(pk)
    # A crafted cursor must be a 400, never a 500: fromtimestamp raises OSError (EOVERFLOW) for
    # stamps like 1e18, OverflowError beyond time_t and ValueError outside years 1–9999.
    except (ValueError, binascii.Error, UnicodeDecodeError, OverflowError, OSError) as exc:
        raise InvalidCursor() from exc


def charges_page(
    subscription: Subscription, *, cursor: str | None = None, limit: int = CHARGES_PAGE_SIZE
) -> tuple[list[ChargedTerm], str | None]:
    """Charged terms newest first, keyset-paginated on (period_start, id) — not offsets, so a
    renewal landing between two page loads neither repeats nor skips a row."""
    terms = ChargedTerm.objects.filter(subscription=subscription).order_by("-period_start", "-id")
    if cursor:
        start, pk = _decode_cursor(cursor)
        terms = terms.filter(Q(period_start__lt=start) | Q(period_start=start, id__lt=pk))
    rows = list(terms[: limit + 1])
    next_cursor = _encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


def charge_json(term: ChargedTerm) -> dict:
    return {
        "id": term.pk,
        "amount_usd": format_usd(term.amount_micros),
        "period_start": iso(term.period_start),
        "period_end": iso(term.period_end),
        "charged_at": iso(term.charged_at),
        "description": term.description,
    }


def sold_out_plan_ids() -> set[str]:
    """Plans with no available credential (C3). One query; no counts leave this function."""
    in_stock = set(
        Credential.objects.filter(state=Credential.State.AVAILABLE)
        .values_list("plan_id", flat=True)
        .distinct()
    )
    return {plan.plan_id for plan in all_plans() if plan.plan_id not in in_stock}


def catalog_json() -> list[dict]:
    sold_out = sold_out_plan_ids()
    return [plan_json(plan, sold_out=plan.plan_id in sold_out) for plan in all_plans()]


def plan_json(plan: Plan, *, sold_out: bool) -> dict:
    return {
        "plan_id": plan.plan_id,
        "provider_id": plan.provider_id,
        "provider_name": plan.provider_name,
        "name": plan.name,
        "price_usd": plan.price_usd,
        "billing_period_days": plan.billing_period_days,
        "payment_source": "Credits",
        "features": list(plan.features),
        "sold_out": sold_out,
    }


def intent_saved(user, plan_id: str) -> bool:
    return AvailabilityIntent.objects.filter(
        user=user, plan_id=plan_id, notified_at__isnull=True
    ).exists()


def saved_intent_plan_ids(user) -> set[str]:
    return set(
        AvailabilityIntent.objects.filter(user=user, notified_at__isnull=True).values_list(
            "plan_id", flat=True
        )
    )
