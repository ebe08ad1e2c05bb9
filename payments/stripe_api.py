"""The one module that talks to Stripe through the official SDK (SPEC M1-M3, M7, M8).

Everything else in the app goes through these functions and gets plain dicts back. The few
places where localstripe (the embedded Stripe of `make dev` and the tests) behaves differently
from Stripe are handled here and listed in docs/payments.md:

- a PaymentMethod from a confirmed SetupIntent is not attached to the customer: `attach_card`
  attaches it when it is not (on Stripe it already is, and attaching is skipped);
- a decline comes back as a 402 without the PaymentIntent in the error: the payment is recorded
  `failed` from our own records, and the `payment_intent.payment_failed` webhook (found by our
  payment id in its metadata) fills in the PaymentIntent id;
- idempotency keys are ignored: exactly-once is ours (the payment row is written before the
  call, the grant is unique per PaymentIntent), the key only helps on Stripe;
- `setup_future_usage` is refused and confirming with a new `payment_method` is not
  implemented: the card is set up with a SetupIntent and the PaymentIntent is created and
  confirmed in one call (SPEC M1), which is also one of Stripe's documented flows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import stripe
from django.conf import settings

log = logging.getLogger(__name__)


def configured() -> bool:
    """Card payments are available exactly when the three Stripe keys are set (SPEC M7,
    docs/payments.md): `make dev` / `make test` set them for the embedded localstripe."""
    return bool(
        settings.STRIPE_SECRET_KEY
        and settings.STRIPE_PUBLISHABLE_KEY
        and settings.STRIPE_WEBHOOK_SECRET
    )


_clients: dict[tuple[str, str, float], stripe.StripeClient] = {}


def client() -> stripe.StripeClient:
    key = (settings.STRIPE_SECRET_KEY, settings.STRIPE_API_BASE, settings.STRIPE_TIMEOUT_SECONDS)
    found = _clients.get(key)
    if found is None:
        found = stripe.StripeClient(
            settings.STRIPE_SECRET_KEY,
            base_addresses={"api": settings.STRIPE_API_BASE},
            # Retries reuse the idempotency key, so on Stripe they never charge twice.
            max_network_retries=2,
            http_client=stripe.RequestsClient(timeout=settings.STRIPE_TIMEOUT_SECONDS),
        )
        _clients[key] = found
    return found


class StripeFailure(Exception):
    """Stripe could not be reached or refused the request for a reason that is not the card's.
    The message is ours (never Stripe's text, which may quote a request)."""


@dataclass(frozen=True)
class Declined(Exception):
    code: str
    payment_intent_id: str | None


def _plain(obj: Any) -> dict:
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


def _fail(action: str, exc: Exception) -> StripeFailure:
    # Only the error's class and Stripe's code are logged: never its message or body.
    log.warning("Stripe %s failed: %s (%s)", action, type(exc).__name__, getattr(exc, "code", ""))
    return StripeFailure(action)


def create_customer(*, user_id: int, email: str) -> str:
    """A Stripe Customer: the e-mail (Stripe needs it for receipts) and our user id, nothing
    else personal (SPEC M3)."""
    try:
        customer = client().v1.customers.create(
            params={"email": email, "metadata": {"user_id": str(user_id)}},
            options={"idempotency_key": f"customer-user-{user_id}"},
        )
    except stripe.StripeError as exc:
        raise _fail("customer create", exc) from None
    return customer.id


def delete_customer(customer_id: str) -> None:
    try:
        client().v1.customers.delete(customer_id)
    except stripe.StripeError as exc:
        _fail("customer delete", exc)


def create_setup_intent(*, customer_id: str, user_id: int) -> str:
    """A SetupIntent for collecting a card with Stripe.js, for off-session use; returns its
    client secret (handed to the browser, never logged)."""
    try:
        intent = client().v1.setup_intents.create(
            params={
                "customer": customer_id,
                "usage": "off_session",
                "payment_method_types": ["card"],
                "metadata": {"user_id": str(user_id)},
            }
        )
    except stripe.StripeError as exc:
        raise _fail("setup intent create", exc) from None
    return intent.client_secret


@dataclass(frozen=True)
class Card:
    id: str
    customer_id: str | None
    brand: str
    last4: str
    exp_month: int | None
    exp_year: int | None


def retrieve_card(payment_method_id: str) -> Card | None:
    """The card behind a PaymentMethod id, or None when Stripe does not know it."""
    try:
        pm = client().v1.payment_methods.retrieve(payment_method_id)
    except stripe.InvalidRequestError:
        return None
    except stripe.StripeError as exc:
        raise _fail("payment method retrieve", exc) from None
    data = pm.to_dict()
    card = data.get("card") or {}
    return Card(
        id=data["id"],
        customer_id=data.get("customer"),
        brand=str(card.get("brand") or "card"),
        last4=str(card.get("last4") or ""),
        exp_month=card.get("exp_month"),
        exp_year=card.get("exp_year"),
    )


def attach_card(card: Card, *, customer_id: str) -> None:
    """Make sure the card is attached to the customer. Stripe attaches a SetupIntent's card to
    the SetupIntent's customer itself; localstripe does not (SPEC M8), so attach it here."""
    if card.customer_id == customer_id:
        return
    try:
        client().v1.payment_methods.attach(card.id, params={"customer": customer_id})
    except stripe.CardError as exc:
        raise Declined(code=_decline_code(exc), payment_intent_id=None) from None
    except stripe.StripeError as exc:
        raise _fail("payment method attach", exc) from None


def detach_card(payment_method_id: str) -> None:
    """Detach at Stripe; a card already detached (or unknown) is fine: safe to repeat."""
    try:
        client().v1.payment_methods.detach(payment_method_id)
    except stripe.InvalidRequestError:
        return
    except stripe.StripeError as exc:
        raise _fail("payment method detach", exc) from None


def set_default_card(*, customer_id: str, payment_method_id: str) -> None:
    try:
        client().v1.customers.update(
            customer_id,
            params={"invoice_settings": {"default_payment_method": payment_method_id}},
        )
    except stripe.StripeError as exc:
        raise _fail("customer update", exc) from None


def _decline_code(exc: stripe.StripeError) -> str:
    error = (exc.json_body or {}).get("error") or {}
    return str(error.get("decline_code") or error.get("code") or "card_declined")[:100]


def charge_card(
    *, payment_id: int, user_id: int, amount_cents: int, customer_id: str, payment_method_id: str
) -> dict:
    """Create and confirm a PaymentIntent in one call (SPEC M1). Returns the PaymentIntent as a
    dict; raises Declined (with the PaymentIntent id when Stripe gives it) or StripeFailure."""
    try:
        intent = client().v1.payment_intents.create(
            params={
                "amount": amount_cents,
                "currency": "usd",
                "customer": customer_id,
                "payment_method": payment_method_id,
                "payment_method_types": ["card"],
                "confirm": True,
                "metadata": {"payment_id": str(payment_id), "user_id": str(user_id)},
            },
            # Ignored by localstripe; on Stripe a retried call can never charge twice.
            options={"idempotency_key": f"card-payment-{payment_id}"},
        )
    except stripe.CardError as exc:
        error = (exc.json_body or {}).get("error") or {}
        intent_obj = error.get("payment_intent") or {}
        raise Declined(
            code=_decline_code(exc),
            payment_intent_id=intent_obj.get("id") if isinstance(intent_obj, dict) else None,
        ) from None
    except stripe.StripeError as exc:
        raise _fail("payment intent create", exc) from None
    return _plain(intent)


def retrieve_intent(payment_intent_id: str) -> dict:
    try:
        return _plain(client().v1.payment_intents.retrieve(payment_intent_id))
    except stripe.StripeError as exc:
        raise _fail("payment intent retrieve", exc) from None


def find_intent_for_payment(payment_id: int, *, customer_id: str | None = None) -> dict | None:
    """The PaymentIntent made for one of our payments, by the metadata we set, for a payment
    whose creation call gave no answer (a timeout, a crash before the answer was recorded) or no
    id (localstripe's declines). On Stripe the customer's PaymentIntents are listed (newest
    first, a few); localstripe refuses that filter and lists everything oldest first, so there
    every page is read (SPEC M8)."""
    wanted = str(payment_id)
    try:
        if customer_id:
            try:
                pages = client().v1.payment_intents.list(
                    params={"customer": customer_id, "limit": 100}
                )
            except stripe.InvalidRequestError:  # localstripe: "Unexpected customer"
                pages = client().v1.payment_intents.list(params={"limit": 100})
        else:
            pages = client().v1.payment_intents.list(params={"limit": 100})
        for intent in pages.auto_paging_iter():
            found = _plain(intent)
            if (found.get("metadata") or {}).get("payment_id") == wanted:
                return found
    except stripe.StripeError as exc:
        raise _fail("payment intent list", exc) from None
    return None


def charge_off_session(
    *,
    payment_id: int,
    attempt_id: int,
    user_id: int,
    amount_cents: int,
    customer_id: str,
    payment_method_id: str,
) -> dict:
    """An automatic top-up (SPEC M4): a PaymentIntent on the saved card with `off_session=true,
    confirm=true`, the idempotency key `top-up-attempt-<id>` (a retry can never charge twice on
    Stripe) and metadata naming our payment, the attempt and the user (nothing personal).

    Returns the PaymentIntent as a dict. Authentication required comes back two ways: Stripe
    raises a card error `authentication_required` carrying the PaymentIntent (status
    `requires_payment_method`); localstripe answers the PaymentIntent in `requires_action`
    (SPEC M8). Both return the PaymentIntent, and `needs_authentication` is true for both. A
    decline raises Declined; anything else StripeFailure (the outcome is then unknown: the
    caller looks the PaymentIntent up by its metadata before trying again)."""
    try:
        intent = client().v1.payment_intents.create(
            params={
                "amount": amount_cents,
                "currency": "usd",
                "customer": customer_id,
                "payment_method": payment_method_id,
                "payment_method_types": ["card"],
                "off_session": True,
                "confirm": True,
                "metadata": {
                    "payment_id": str(payment_id),
                    "top_up_attempt_id": str(attempt_id),
                    "user_id": str(user_id),
                },
            },
            options={"idempotency_key": f"top-up-attempt-{attempt_id}"},
        )
    except stripe.CardError as exc:
        error = (exc.json_body or {}).get("error") or {}
        intent_obj = error.get("payment_intent")
        code = _decline_code(exc)
        if (
            isinstance(intent_obj, dict)
            and intent_obj.get("id")
            and (code == "authentication_required" or needs_authentication(intent_obj))
        ):
            return intent_obj
        raise Declined(
            code=code,
            payment_intent_id=intent_obj.get("id") if isinstance(intent_obj, dict) else None,
        ) from None
    except stripe.StripeError as exc:
        raise _fail("off-session payment intent create", exc) from None
    return _plain(intent)


def needs_authentication(intent: dict) -> bool:
    """The customer must authenticate the PaymentIntent in the browser: `requires_action`
    (localstripe's off-session answer, and any on-session one), or Stripe's off-session
    `authentication_required` (status `requires_payment_method` with that error)."""
    status = intent.get("status")
    if status == "requires_action":
        return True
    error = intent.get("last_payment_error") or {}
    return status == "requires_payment_method" and "authentication_required" in (
        error.get("code"),
        error.get("decline_code"),
    )


def action_client_secret(intent: dict) -> tuple[str | None, str | None]:
    """(client secret, PaymentMethod to confirm with) for Stripe.js's `confirmCardPayment` on
    the confirm page; the PaymentMethod is only needed after Stripe's `authentication_required`,
    where the PaymentIntent went back to `requires_payment_method`."""
    if not needs_authentication(intent):
        return None, None
    if intent.get("status") == "requires_action":
        return intent.get("client_secret"), None
    payment_method = intent.get("payment_method")
    if isinstance(payment_method, dict):
        payment_method = payment_method.get("id")
    return intent.get("client_secret"), payment_method


class RefundRefused(Exception):
    """Stripe answered that this refund cannot be made (an invalid request, a charge already
    refunded or disputed): the refund failed for good."""

    def __init__(self, code: str):
        super().__init__(code)
        self.code = code


def create_refund(
    *, refund_id: int, payment_id: int, payment_intent_id: str, amount_cents: int
) -> dict:
    """A refund of (part of) a PaymentIntent (SPEC M5), idempotency key `refund-<id>`, metadata
    naming our refund and payment. The free-text reason stays with us (Stripe's `reason` takes
    only its own three values, and localstripe refuses the parameter). Returns the refund as a
    dict; raises RefundRefused when Stripe refuses it, StripeFailure when the outcome is
    unknown (no answer)."""
    try:
        refund = client().v1.refunds.create(
            params={
                "payment_intent": payment_intent_id,
                "amount": amount_cents,
                "metadata": {"refund_id": str(refund_id), "payment_id": str(payment_id)},
            },
            options={"idempotency_key": f"refund-{refund_id}"},
        )
    except (stripe.InvalidRequestError, stripe.CardError, stripe.PermissionError) as exc:
        error = (getattr(exc, "json_body", None) or {}).get("error") or {}
        code = str(error.get("code") or type(exc).__name__)[:100]
        log.warning("Stripe refused refund %s: %s", refund_id, code)
        raise RefundRefused(code) from None
    except stripe.StripeError as exc:
        raise _fail("refund create", exc) from None
    return _plain(refund)


def find_refund(*, refund_id: int, payment_intent_id: str) -> dict | None:
    """Our refund at Stripe, by its metadata, when the create call gave no answer."""
    try:
        refunds = client().v1.refunds.list(
            params={"payment_intent": payment_intent_id, "limit": 100}
        )
        for refund in refunds.auto_paging_iter():
            found = _plain(refund)
            if (found.get("metadata") or {}).get("refund_id") == str(refund_id):
                return found
    except stripe.InvalidRequestError:
        return None
    except stripe.StripeError as exc:
        raise _fail("refund list", exc) from None
    return None


def construct_event(payload: bytes, signature: str | None) -> dict:
    """A verified event (SPEC M2: Stripe's signature with STRIPE_WEBHOOK_SECRET, 5 minutes'
    tolerance), as a dict; raises ValueError when the signature or the payload is bad."""
    if not signature:
        raise ValueError("missing signature")
    try:
        event = stripe.Webhook.construct_event(
            payload, signature, settings.STRIPE_WEBHOOK_SECRET, tolerance=300
        )
    except (stripe.SignatureVerificationError, ValueError, KeyError, IndexError) as exc:
        raise ValueError("bad signature") from exc
    return _plain(event)


def intent_failure_code(intent: dict) -> str:
    error = intent.get("last_payment_error") or {}
    return str(error.get("decline_code") or error.get("code") or "card_declined")[:100]
