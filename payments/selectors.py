"""Reads for the credits page and the API (SPEC M3, M9, 11.1)."""

from __future__ import annotations

from datetime import UTC, datetime

from codingplans.money import format_usd
from payments.errors import InvalidCursor, PaymentNotFound
from payments.models import CardPayment, StripeCustomer

PAGE_SIZE = 20


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z, as the API shows times."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def payment_json(payment: CardPayment) -> dict:
    """P of SPEC 11.1."""
    return {
        "id": payment.pk,
        "amount_usd": format_usd(payment.amount_micros),
        "status": payment.status,
        "refunded_usd": format_usd(payment.refunded_micros),
        "created_at": iso(payment.created_at),
        "succeeded_at": iso(payment.succeeded_at),
        "failure_code": payment.failure_code or None,
    }


def payment_for(user, payment_id: int) -> CardPayment:
    """One of the user's payments; someone else's is 404 (SPEC S2)."""
    payment = CardPayment.objects.filter(user=user, pk=payment_id).first()
    if payment is None:
        raise PaymentNotFound()
    return payment


def payments_page(
    user, *, cursor: str | None = None, limit: int = PAGE_SIZE
) -> tuple[list[CardPayment], str | None]:
    """Newest first, keyset-paginated on id (the cursor is the last id shown)."""
    payments = CardPayment.objects.filter(user=user).order_by("-id")
    if cursor:
        if not cursor.isdigit() or len(cursor) > 18:
            raise InvalidCursor()
        payments = payments.filter(id__lt=int(cursor))
    rows = list(payments[: limit + 1])
    next_cursor = str(rows[limit - 1].pk) if len(rows) > limit else None
    return rows[:limit], next_cursor


def saved_card_for(user) -> StripeCustomer | None:
    customer = StripeCustomer.objects.filter(user=user).first()
    if customer is None or not customer.payment_method_id:
        return None
    return customer


def card_json(customer: StripeCustomer | None) -> dict:
    if customer is None:
        return {"card": None}
    return {
        "card": {
            "brand": customer.card_brand,
            "last4": customer.card_last4,
            "exp_month": customer.card_exp_month,
            "exp_year": customer.card_exp_year,
        }
    }
