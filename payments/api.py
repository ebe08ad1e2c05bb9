"""/api/v1/credits/payment-method…, /api/v1/credits/payments… and the Stripe webhook
(SPEC 11.1, M1-M3, M9)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from ninja import Router, Schema, Status
from pydantic import StrictBool, StrictStr

from accounts.verification import require_verified
from adminops.audit import actor_for
from payments import selectors, services
from payments.errors import InvalidSignature

router = Router(tags=["credits"])
webhook_router = Router(tags=["payments"], auth=None)


class PaymentIn(Schema):
    # Any: the amount is parsed by our own rules, so a float, an exponent or a missing amount is
    # `invalid_amount` like every other bad amount (SPEC M1), not a schema error.
    amount_usd: Any = None
    payment_method_id: StrictStr | None = None
    save_card: StrictBool = False


@router.post("/payment-method/setup", response={201: dict})
def setup_payment_method(request: HttpRequest):
    return Status(201, services.create_setup_intent(user=request.auth, now=timezone.now()))


@router.get("/payment-method")
def get_payment_method(request: HttpRequest):
    return selectors.card_json(selectors.saved_card_for(request.auth))


@router.delete("/payment-method", response={204: None})
def delete_payment_method(request: HttpRequest):
    services.remove_saved_card(user=request.auth, now=timezone.now())
    return Status(204, None)


@router.post("/payments", response={201: dict})
def create_payment(request: HttpRequest, payload: PaymentIn):
    require_verified(request.auth)  # issue 19, SPEC A2: before the amount is judged
    payment, secret = services.pay_by_card(
        user=request.auth,
        amount_micros=services.parse_amount(payload.amount_usd),
        payment_method_id=payload.payment_method_id,
        save_card=payload.save_card,
        actor=actor_for(request.auth),
        now=timezone.now(),
    )
    return Status(201, {"payment": selectors.payment_json(payment), "client_secret": secret})


@router.get("/payments")
def list_payments(request: HttpRequest, cursor: str | None = None):
    payments, next_cursor = selectors.payments_page(request.auth, cursor=cursor or None)
    return {"payments": [selectors.payment_json(p) for p in payments], "next_cursor": next_cursor}


@router.get("/payments/{int:payment_id}")
def get_payment(request: HttpRequest, payment_id: int):
    return selectors.payment_json(selectors.payment_for(request.auth, payment_id))


@webhook_router.post("/stripe/webhook")
def stripe_webhook(request: HttpRequest):
    """Stripe's signed events: 400 on a bad or missing signature (nothing changes), 200 for
    every event accepted, handled or ignored (SPEC M2, 11.1)."""
    try:
        outcome = services.handle_webhook(
            payload=request.body,
            signature=request.headers.get("Stripe-Signature"),
            now=timezone.now(),
        )
    except ValueError as exc:
        raise InvalidSignature() from exc
    return HttpResponse(
        f'{{"received": true, "outcome": "{outcome}"}}', content_type="application/json"
    )
