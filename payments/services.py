"""Every state change of card payments (SPEC M1-M3, M9).

The shape of each one (DESIGN, "no call to an outside service under a row lock"): record the
intent and commit, call Stripe with no transaction open, then record the outcome in a new
transaction that locks the rows in the fixed order (credit account → card payment) and acts
only if the outcome is new. Three paths can report the same PaymentIntent's success — the
confirmation's own answer, the return page's check and Stripe's webhook, in any order and at
once — and all three end in `_apply_intent`, which grants through billing's guarded ledger path
at most once: the payment row is locked and checked, it points one-to-one at its ledger entry,
and billing's partial unique index allows one `card_payment` entry per PaymentIntent.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.template.loader import render_to_string

from accounts.verification import require_verified
from adminops.audit import record_event
from billing.services import (
    CARD_PAYMENT_MAX_MICROS,
    CARD_PAYMENT_MIN_MICROS,
    CENT_MICROS,
    grant_card_payment,
    lock_credit_account,
)
from codingplans.money import InvalidAmount, display_usd, usd_to_micros
from payments import stripe_api
from payments.errors import (
    CardDeclined,
    InvalidPaymentAmount,
    InvalidPaymentMethod,
    NoPaymentMethod,
    PaymentProcessorError,
    PaymentsUnavailable,
)
from payments.models import CardPayment, StripeCustomer, WebhookEvent
from payments.selectors import payment_for

log = logging.getLogger(__name__)

Status = CardPayment.Status
WEBHOOK_ACTOR = "system:stripe-webhook"
_PAYMENT_METHOD_ID = re.compile(r"^pm_[A-Za-z0-9_]{1,200}$")
_OPEN = (Status.PENDING, Status.REQUIRES_ACTION)

# Stripe's decline codes in plain words (SPEC M1: "Stripe's reason in plain words").
_DECLINE_WORDS = {
    "insufficient_funds": "Your card has insufficient funds.",
    "expired_card": "Your card has expired.",
    "incorrect_cvc": "The card's security code is incorrect.",
    "incorrect_number": "The card number is incorrect.",
    "lost_card": "Your card was declined (reported lost).",
    "stolen_card": "Your card was declined (reported stolen).",
    "processing_error": "The card could not be processed. Try again in a moment.",
    "payment_intent_authentication_failure": "The card's authentication was not completed.",
    "authentication_required": "Your bank asks you to authenticate this payment.",
}


def decline_message(code: str) -> str:
    words = _DECLINE_WORDS.get(code, "Your card was declined.")
    return f"{words} No money was taken; try another card or contact your bank."


def parse_amount(value: object) -> int:
    """A payment amount (SPEC M1): USD as a string ("25", "25.50") or a whole number, $5 to
    $1,000, whole cents. Floats, exponents, fractions of a cent and anything else are refused."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidPaymentAmount()
    try:
        micros = usd_to_micros(value)
    except InvalidAmount as exc:
        raise InvalidPaymentAmount() from exc
    if not CARD_PAYMENT_MIN_MICROS <= micros <= CARD_PAYMENT_MAX_MICROS or micros % CENT_MICROS:
        raise InvalidPaymentAmount()
    return micros


def _require_payments() -> None:
    if not stripe_api.configured():
        raise PaymentsUnavailable()


# --- the Stripe Customer and the saved card (SPEC M3) -------------------------------------


def ensure_customer(*, user, now: datetime) -> StripeCustomer:
    """The user's Stripe Customer, created on first need. Stripe is called with no
    transaction open; two first payments at once make one row (the loser's Stripe Customer is
    deleted again)."""
    existing = StripeCustomer.objects.filter(user=user).first()
    if existing is not None:
        return existing
    try:
        customer_id = stripe_api.create_customer(user_id=user.pk, email=user.email)
    except stripe_api.StripeFailure as exc:
        raise PaymentProcessorError() from exc
    try:
        with transaction.atomic(durable=True):
            customer = StripeCustomer.objects.create(
                user=user, customer_id=customer_id, created_at=now, updated_at=now
            )
            record_event(
                actor=f"user:{user.pk}",
                subject=customer,
                event_type="stripe_customer.created",
                now=now,
            )
    except IntegrityError:
        winner = StripeCustomer.objects.get(user=user)
        if winner.customer_id != customer_id:  # on Stripe the idempotency key made them one
            stripe_api.delete_customer(customer_id)
        return winner
    return customer


def create_setup_intent(*, user, now: datetime) -> dict:
    """SPEC 11.1 `POST /credits/payment-method/setup`: a SetupIntent (off-session use) for the
    customer's Stripe Customer, for Stripe.js to collect a card."""
    require_verified(user)  # issue 19, SPEC A2: 403 email_unverified
    _require_payments()
    customer = ensure_customer(user=user, now=now)
    try:
        secret = stripe_api.create_setup_intent(customer_id=customer.customer_id, user_id=user.pk)
    except stripe_api.StripeFailure as exc:
        raise PaymentProcessorError() from exc
    return {"client_secret": secret, "publishable_key": settings.STRIPE_PUBLISHABLE_KEY}


def remove_saved_card(*, user, now: datetime) -> None:
    """Remove the saved card: detached at Stripe first (no lock held), then forgotten here.
    Removing when there is none is a no-op."""
    customer = StripeCustomer.objects.filter(user=user).first()
    if customer is None or not customer.payment_method_id:
        return
    payment_method_id = customer.payment_method_id
    if stripe_api.configured():
        try:
            stripe_api.detach_card(payment_method_id)
        except stripe_api.StripeFailure as exc:
            raise PaymentProcessorError() from exc
    with transaction.atomic(durable=True):
        customer = StripeCustomer.objects.select_for_update().get(pk=customer.pk)
        if customer.payment_method_id != payment_method_id:
            return  # replaced meanwhile: the new card stays
        old = {"brand": customer.card_brand, "last4": customer.card_last4}
        customer.payment_method_id = ""
        customer.card_brand = customer.card_last4 = ""
        customer.card_exp_month = customer.card_exp_year = None
        customer.updated_at = now
        customer.save(
            update_fields=[
                "payment_method_id",
                "card_brand",
                "card_last4",
                "card_exp_month",
                "card_exp_year",
                "updated_at",
            ]
        )
        record_event(
            actor=f"user:{user.pk}",
            subject=customer,
            event_type="saved_card.removed",
            now=now,
            old=old,
        )


def _save_card(*, payment: CardPayment, now: datetime) -> None:
    """The payment's card becomes the customer's one default card (at Stripe too); the card it
    replaces is detached."""
    card = stripe_api.retrieve_card(payment.payment_method_id)
    customer = StripeCustomer.objects.get(user_id=payment.user_id)
    if card is None or card.customer_id not in (None, customer.customer_id):
        return
    stripe_api.set_default_card(
        customer_id=customer.customer_id, payment_method_id=payment.payment_method_id
    )
    with transaction.atomic(durable=True):
        customer = StripeCustomer.objects.select_for_update().get(pk=customer.pk)
        replaced = customer.payment_method_id
        customer.payment_method_id = card.id
        customer.card_brand = card.brand[:20]
        customer.card_last4 = card.last4[:4]
        customer.card_exp_month = card.exp_month
        customer.card_exp_year = card.exp_year
        customer.updated_at = now
        customer.save()
        record_event(
            actor=f"user:{payment.user_id}",
            subject=customer,
            event_type="saved_card.set",
            now=now,
            new={"brand": card.brand, "last4": card.last4, "payment_id": payment.pk},
        )
    if replaced and replaced != card.id:
        stripe_api.detach_card(replaced)


def settle_card(*, payment_id: int, now: datetime) -> None:
    """After a payment's outcome (run after commit; safe to repeat): save the card if asked
    and the payment succeeded, otherwise detach it unless it is the saved card (SPEC M3)."""
    payment = CardPayment.objects.get(pk=payment_id)
    if payment.card_settled_at is not None or payment.status in _OPEN:
        return
    if not payment.payment_method_id or not stripe_api.configured():
        return
    if payment.save_card and payment.status == Status.SUCCEEDED:
        _save_card(payment=payment, now=now)
    else:
        saved = StripeCustomer.objects.filter(user_id=payment.user_id).first()
        if saved is None or saved.payment_method_id != payment.payment_method_id:
            stripe_api.detach_card(payment.payment_method_id)
    CardPayment.objects.filter(pk=payment_id, card_settled_at__isnull=True).update(
        card_settled_at=now
    )


# --- paying (SPEC M1) --------------------------------------------------------------------


def pay_by_card(
    *,
    user,
    amount_micros: int,
    payment_method_id: str | None,
    save_card: bool,
    actor: str,
    now: datetime,
) -> tuple[CardPayment, str | None]:
    """Charge a card: the card just set up with Stripe.js (`payment_method_id`) or the saved
    one. Returns the payment and, when the bank asks for authentication, the PaymentIntent's
    client secret for Stripe.js. A decline raises CardDeclined after recording it."""
    require_verified(user)  # issue 19, SPEC A2: 403 email_unverified
    _require_payments()
    if (
        not CARD_PAYMENT_MIN_MICROS <= amount_micros <= CARD_PAYMENT_MAX_MICROS
        or amount_micros % CENT_MICROS
    ):
        raise InvalidPaymentAmount()
    if payment_method_id is not None and not _PAYMENT_METHOD_ID.match(payment_method_id):
        raise InvalidPaymentMethod()
    if payment_method_id is None:
        saved = StripeCustomer.objects.filter(user=user).exclude(payment_method_id="").first()
        if saved is None:
            raise NoPaymentMethod()
        payment_method_id = saved.payment_method_id
    customer = ensure_customer(user=user, now=now)
    try:
        card = stripe_api.retrieve_card(payment_method_id)
    except stripe_api.StripeFailure as exc:
        raise PaymentProcessorError() from exc
    if card is None or card.customer_id not in (None, customer.customer_id):
        raise InvalidPaymentMethod()

    # 1. Record the intent and commit: from here on, whatever Stripe answers (or if it never
    #    answers), the payment id in the PaymentIntent's metadata finds this row.
    with transaction.atomic(durable=True):
        payment = CardPayment.objects.create(
            user=user,
            amount_micros=amount_micros,
            payment_method_id=payment_method_id,
            save_card=save_card,
            card_brand=card.brand[:20],
            card_last4=card.last4[:4],
            created_at=now,
            updated_at=now,
        )
        record_event(
            actor=actor,
            subject=payment,
            event_type="card_payment.created",
            now=now,
            new={"amount_micros": amount_micros, "save_card": save_card},
        )

    # 2. Call Stripe with no transaction open.
    try:
        stripe_api.attach_card(card, customer_id=customer.customer_id)
        intent = stripe_api.charge_card(
            payment_id=payment.pk,
            user_id=user.pk,
            amount_cents=amount_micros // CENT_MICROS,
            customer_id=customer.customer_id,
            payment_method_id=payment_method_id,
        )
    except stripe_api.Declined as declined:
        _record_decline(
            payment_id=payment.pk,
            code=declined.code,
            payment_intent_id=declined.payment_intent_id,
            actor=actor,
            now=now,
        )
        raise CardDeclined(decline_message(declined.code)) from None
    except stripe_api.StripeFailure as exc:
        # The payment stays pending: the webhook or the page's check settles it.
        raise PaymentProcessorError() from exc

    # 3. Record the outcome (exactly once, whichever path gets there first).
    payment = _record_intent(payment_id=payment.pk, intent=intent, actor=actor, now=now)
    if payment.status == Status.FAILED:
        raise CardDeclined(decline_message(payment.failure_code))
    secret = intent.get("client_secret") if payment.status == Status.REQUIRES_ACTION else None
    return payment, secret


def _record_decline(
    *, payment_id: int, code: str, payment_intent_id: str | None, actor: str, now: datetime
) -> None:
    with transaction.atomic(durable=True):
        payment = CardPayment.objects.select_for_update().get(pk=payment_id)
        if payment.status in _OPEN:
            _mark_failed(payment, code=code, actor=actor, now=now)
        if payment_intent_id and not payment.payment_intent_id:
            payment.payment_intent_id = payment_intent_id
            payment.save(update_fields=["payment_intent_id"])


def _mark_failed(payment: CardPayment, *, code: str, actor: str, now: datetime) -> None:
    old = payment.status
    payment.status = Status.FAILED
    payment.failure_code = code[:100]
    payment.updated_at = now
    payment.save(update_fields=["status", "failure_code", "updated_at"])
    record_event(
        actor=actor,
        subject=payment,
        event_type="card_payment.failed",
        now=now,
        old={"status": old},
        new={"status": payment.status, "failure_code": payment.failure_code},
    )
    transaction.on_commit(lambda: settle_card(payment_id=payment.pk, now=now), robust=True)


def _record_intent(*, payment_id: int, intent: dict, actor: str, now: datetime) -> CardPayment:
    """Apply what Stripe says about a payment's PaymentIntent, in a transaction of its own."""
    with transaction.atomic(durable=True):
        _apply_intent(payment_id=payment_id, intent=intent, actor=actor, now=now)
    return CardPayment.objects.get(pk=payment_id)


def _apply_intent(*, payment_id: int, intent: dict, actor: str, now: datetime) -> str:
    """The one place a PaymentIntent's state reaches a payment, inside the caller's
    transaction. Locks the credit account, then the payment (the fixed order), and acts only
    on news: a succeeded PaymentIntent grants once (SPEC M2); a failure never undoes a success;
    a stale event never moves a payment back. Returns what happened, for the webhook record."""
    user_id = CardPayment.objects.filter(pk=payment_id).values_list("user_id", flat=True).first()
    if user_id is None:
        return "unknown_payment"
    lock_credit_account(user_id=user_id)
    payment = CardPayment.objects.select_for_update().get(pk=payment_id)
    intent_id = str(intent.get("id") or "")
    if payment.payment_intent_id and payment.payment_intent_id != intent_id:
        # On Stripe the idempotency key rules this out; it would be a second charge for one
        # payment, so it is never credited here and an operator must look (docs/payments.md).
        log.error("Card payment %s: a second PaymentIntent reported; not credited", payment.pk)
        return "other_intent"
    if (intent.get("metadata") or {}).get("payment_id") not in (None, str(payment.pk)):
        log.error("Card payment %s: PaymentIntent metadata names another payment", payment.pk)
        return "metadata_mismatch"
    if intent.get("amount") != payment.amount_micros // CENT_MICROS or intent.get(
        "currency"
    ) not in ("usd", None):
        log.error("Card payment %s: PaymentIntent amount differs; not credited", payment.pk)
        return "amount_mismatch"
    if not payment.payment_intent_id:
        payment.payment_intent_id = intent_id
        payment.save(update_fields=["payment_intent_id"])

    status = intent.get("status")
    if status == "succeeded":
        if payment.ledger_entry_id is not None:
            return "already_granted"
        old = payment.status
        entry = grant_card_payment(
            user_id=payment.user_id,
            amount_micros=payment.amount_micros,
            reference=f"stripe_pi:{intent_id}",
            actor=actor,
            now=now,
            reason=f"Card payment #{payment.pk}"
            + (
                f" ({payment.card_brand.title()} ending {payment.card_last4})"
                if payment.card_last4
                else ""
            ),
        )
        payment.status = Status.SUCCEEDED
        payment.ledger_entry = entry
        payment.succeeded_at = now
        payment.failure_code = ""
        payment.updated_at = now
        payment.save(
            update_fields=["status", "ledger_entry", "succeeded_at", "failure_code", "updated_at"]
        )
        record_event(
            actor=actor,
            subject=payment,
            event_type="card_payment.succeeded",
            now=now,
            old={"status": old},
            new={
                "status": payment.status,
                "amount_micros": payment.amount_micros,
                "ledger_entry_id": entry.pk,
                "balance_after_micros": entry.balance_after_micros,
            },
        )
        transaction.on_commit(lambda: send_receipt(payment_id=payment.pk, now=now), robust=True)
        transaction.on_commit(lambda: settle_card(payment_id=payment.pk, now=now), robust=True)
        return "granted"
    if payment.status not in _OPEN:
        return "no_change"
    if status == "requires_action":
        if payment.status != Status.REQUIRES_ACTION:
            payment.status = Status.REQUIRES_ACTION
            payment.updated_at = now
            payment.save(update_fields=["status", "updated_at"])
            record_event(
                actor=actor,
                subject=payment,
                event_type="card_payment.requires_action",
                now=now,
                new={"status": payment.status},
            )
            return "requires_action"
        return "no_change"
    if status in ("requires_payment_method", "canceled"):
        code = (
            stripe_api.intent_failure_code(intent) if intent.get("last_payment_error") else status
        )
        _mark_failed(payment, code=code, actor=actor, now=now)
        return "failed"
    return "no_change"  # processing, requires_confirmation, requires_capture: wait


def refresh_payment(*, user, payment_id: int, actor: str, now: datetime) -> CardPayment:
    """The return page's check (SPEC M2): re-read the PaymentIntent at Stripe and record it.
    Only an open payment is looked up; a settled one is returned as it is."""
    payment = payment_for(user, payment_id)
    if payment.status not in _OPEN or not stripe_api.configured():
        return payment
    try:
        if payment.payment_intent_id:
            intent = stripe_api.retrieve_intent(payment.payment_intent_id)
        else:
            intent = stripe_api.find_intent_for_payment(payment.pk)
    except stripe_api.StripeFailure as exc:
        raise PaymentProcessorError() from exc
    if intent is None:
        return payment
    return _record_intent(payment_id=payment.pk, intent=intent, actor=actor, now=now)


def intent_client_secret(*, payment: CardPayment) -> str | None:
    """The client secret Stripe.js needs to finish authentication on the confirm page; read
    from Stripe when the page is shown, never stored."""
    if payment.status != Status.REQUIRES_ACTION or not payment.payment_intent_id:
        return None
    try:
        intent = stripe_api.retrieve_intent(payment.payment_intent_id)
    except stripe_api.StripeFailure as exc:
        raise PaymentProcessorError() from exc
    return intent.get("client_secret") if intent.get("status") == "requires_action" else None


# --- the webhook (SPEC M2) ----------------------------------------------------------------

_INTENT_EVENTS = {
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "payment_intent.requires_action",
    "payment_intent.canceled",
    "payment_intent.processing",
}
# Recorded now; settled by the refunds work (SPEC M5, issue 16).
_RECORDED_EVENTS = {"charge.refunded", "refund.updated", "refund.created", "refund.failed"}


def _payment_for_intent(intent: dict) -> CardPayment | None:
    intent_id = str(intent.get("id") or "")
    payment = CardPayment.objects.filter(payment_intent_id=intent_id).first() if intent_id else None
    if payment is not None:
        return payment
    metadata = intent.get("metadata") or {}
    payment_id, user_id = metadata.get("payment_id"), metadata.get("user_id")
    if not (str(payment_id or "").isdigit() and str(user_id or "").isdigit()):
        return None
    return CardPayment.objects.filter(
        pk=int(payment_id), user_id=int(user_id), payment_intent_id__isnull=True
    ).first()


def handle_webhook(*, payload: bytes, signature: str | None, now: datetime) -> str:
    """A signed Stripe event: verified (a bad, missing or expired signature raises ValueError
    and changes nothing), recorded once per event id (a replay or a concurrent delivery of the
    same event waits for the first and then finds it), and applied. Returns the outcome."""
    event = stripe_api.construct_event(payload, signature)  # ValueError → 400
    event_id, event_type = str(event.get("id") or ""), str(event.get("type") or "")
    obj = (event.get("data") or {}).get("object") or {}
    if not event_id:
        raise ValueError("event without id")
    with transaction.atomic(durable=True):
        try:
            with transaction.atomic():
                record = WebhookEvent.objects.create(
                    event_id=event_id[:255],
                    type=event_type[:100],
                    object_id=str(obj.get("id") or "")[:255],
                    received_at=now,
                )
        except IntegrityError:
            return "duplicate"
        outcome = "ignored"
        if event_type in _INTENT_EVENTS and obj.get("object") == "payment_intent":
            payment = _payment_for_intent(obj)
            if payment is None:
                outcome = "not_ours"
            else:
                record.payment = payment
                outcome = _apply_intent(
                    payment_id=payment.pk, intent=obj, actor=WEBHOOK_ACTOR, now=now
                )
        elif event_type in _RECORDED_EVENTS:
            outcome = "recorded"
        record.outcome = outcome
        record.save(update_fields=["payment", "outcome"])
    return outcome


# --- receipts (SPEC M9) -------------------------------------------------------------------


def send_receipt(*, payment_id: int, now: datetime) -> bool:
    """One receipt e-mail per succeeded payment (after commit; a repeat sends nothing)."""
    claimed = CardPayment.objects.filter(
        pk=payment_id, ledger_entry__isnull=False, receipt_sent_at__isnull=True
    ).update(receipt_sent_at=now)
    if not claimed:
        return False
    payment = CardPayment.objects.select_related("user", "ledger_entry").get(pk=payment_id)
    if payment.user.deleted_at is not None:
        return False
    context = {
        "amount": display_usd(payment.amount_micros),
        "balance_after": display_usd(payment.ledger_entry.balance_after_micros),
        "date": payment.succeeded_at or now,
        "payment": payment,
    }
    send_mail(
        subject=f"Receipt: {context['amount']} of credits added",
        message=render_to_string("payments/email/receipt.txt", context),
        html_message=render_to_string("payments/email/receipt.html", context),
        from_email=None,
        recipient_list=[payment.user.email],
    )
    return True
