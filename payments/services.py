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
from datetime import datetime, timedelta

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.template.loader import render_to_string

from accounts.verification import require_verified
from adminops.audit import record_event
from billing.errors import InsufficientCredits
from billing.models import TopUpAttempt
from billing.services import (
    CARD_PAYMENT_MAX_MICROS,
    CARD_PAYMENT_MIN_MICROS,
    CENT_MICROS,
    apply_top_up_outcome,
    debit_refund,
    grant_card_payment,
    lock_credit_account,
    reverse_refund,
    turn_off_auto_top_up,
)
from billing.topup import ChargeResult, decline_words
from codingplans import sql
from codingplans.money import InvalidAmount, display_usd, usd_to_micros
from payments import stripe_api
from payments.errors import (
    CardDeclined,
    InvalidPaymentAmount,
    InvalidPaymentMethod,
    InvalidRefundAmount,
    NoPaymentMethod,
    PaymentNotRefundable,
    PaymentProcessorError,
    PaymentsUnavailable,
    RefundExceedsBalance,
    RefundExceedsPayment,
    RefundReasonRequired,
)
from payments.models import CardPayment, Refund, StripeCustomer, WebhookEvent
from payments.selectors import payment_for

log = logging.getLogger(__name__)

Status = CardPayment.Status
WEBHOOK_ACTOR = "system:stripe-webhook"
_PAYMENT_METHOD_ID = re.compile(r"^pm_[A-Za-z0-9_]{1,200}$")
_OPEN = (Status.PENDING, Status.REQUIRES_ACTION)

WEBHOOK_ACTOR_REFUNDS = WEBHOOK_ACTOR
TOP_UP_ACTOR = "system:sweep"  # the off-session charge acts for the sweep that started it
# A charge sent this recently and not found at Stripe may still be in flight: wait rather than
# send another (on Stripe the idempotency key would make it one; localstripe ignores keys).
CHARGE_IN_FLIGHT = timedelta(minutes=5)


def decline_message(code: str) -> str:
    """Stripe's decline code in plain words (SPEC M1; the list is billing.topup's)."""
    return f"{decline_words(code)} No money was taken; try another card or contact your bank."


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


def remove_saved_card(*, user, now: datetime) -> bool:
    """Remove the saved card: detached at Stripe first (no lock held), then forgotten here.
    Removing when there is none is a no-op. With the stripe top-up backend, auto top-up needs
    the card, so it is turned off in the same transaction (SPEC M4); returns whether it was."""
    customer = StripeCustomer.objects.filter(user=user).first()
    if customer is None or not customer.payment_method_id:
        return False
    payment_method_id = customer.payment_method_id
    if stripe_api.configured():
        try:
            stripe_api.detach_card(payment_method_id)
        except stripe_api.StripeFailure as exc:
            raise PaymentProcessorError() from exc
    turned_off = False
    with transaction.atomic(durable=True):
        lock_credit_account(user_id=user.pk)  # first in the lock order; set_auto_top_up too
        customer = StripeCustomer.objects.select_for_update().get(pk=customer.pk)
        if customer.payment_method_id != payment_method_id:
            return False  # replaced meanwhile: the new card stays
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
        if settings.CODING_PLANS_TOP_UP_BACKEND == "stripe":
            turned_off = turn_off_auto_top_up(
                user_id=user.pk, actor=f"user:{user.pk}", now=now, why="saved_card_removed"
            )
    return turned_off


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
        user_id = CardPayment.objects.values_list("user_id", flat=True).get(pk=payment_id)
        lock_credit_account(user_id=user_id)  # the lock order: a top-up's decline writes a record
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
    if payment.top_up_attempt_id is not None:  # SPEC M4: the attempt is declined with the code
        apply_top_up_outcome(
            attempt_id=payment.top_up_attempt_id,
            result=ChargeResult(
                approved=False,
                decline_reason=payment.failure_code,
                reference=_intent_reference(payment.payment_intent_id),
            ),
            actor=actor,
            now=now,
        )
    transaction.on_commit(lambda: settle_card(payment_id=payment.pk, now=now), robust=True)


def _intent_reference(intent_id: str | None) -> str:
    return f"stripe_pi:{intent_id}" if intent_id else ""


def _confirm_url(payment: CardPayment) -> str:
    return f"/credits/payments/{payment.pk}/confirm/"


def _record_intent(*, payment_id: int, intent: dict, actor: str, now: datetime) -> CardPayment:
    """Apply what Stripe says about a payment's PaymentIntent, in a transaction of its own."""
    with transaction.atomic(durable=True):
        _apply_intent(payment_id=payment_id, intent=intent, actor=actor, now=now)
    return CardPayment.objects.get(pk=payment_id)


def _grant_payment(payment: CardPayment, *, intent_id: str, actor: str, now: datetime):
    """A payment the customer made (SPEC M1, M2): one `card_payment` entry per PaymentIntent."""
    return grant_card_payment(
        user_id=payment.user_id,
        amount_micros=payment.amount_micros,
        reference=_intent_reference(intent_id),
        actor=actor,
        now=now,
        reason=f"Card payment #{payment.pk}"
        + (
            f" ({payment.card_brand.title()} ending {payment.card_last4})"
            if payment.card_last4
            else ""
        ),
    )


def _grant_top_up(payment: CardPayment, *, intent_id: str, actor: str, now: datetime):
    """An automatic top-up charged off-session (SPEC M4, S5): the attempt is approved and
    credits one `top_up` entry whose reference is the PaymentIntent — unique among card
    credits, so this PaymentIntent can credit once whichever path reports it. Returns the
    entry, or None when the attempt was already closed some other way (logged: an operator
    looks; nothing is credited twice)."""
    apply_top_up_outcome(
        attempt_id=payment.top_up_attempt_id,
        result=ChargeResult(
            approved=True,
            reference=_intent_reference(intent_id),
            ledger_reference=_intent_reference(intent_id),
        ),
        actor=actor,
        now=now,
    )
    attempt = TopUpAttempt.objects.select_related("ledger_entry").get(pk=payment.top_up_attempt_id)
    entry = attempt.ledger_entry
    if (
        attempt.status != TopUpAttempt.Status.APPROVED
        or entry is None
        or entry.reference != _intent_reference(intent_id)
    ):
        log.error(
            "Top-up payment %s succeeded but its attempt %s is %s; not credited",
            payment.pk,
            attempt.pk,
            attempt.status,
        )
        return None
    return entry


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
        if payment.top_up_attempt_id is not None:
            entry = _grant_top_up(payment, intent_id=intent_id, actor=actor, now=now)
            if entry is None:
                return "attempt_closed"
        else:
            entry = _grant_payment(payment, intent_id=intent_id, actor=actor, now=now)
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
    if stripe_api.needs_authentication(intent):
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
            if payment.top_up_attempt_id is not None:  # SPEC M4: the customer completes it
                apply_top_up_outcome(
                    attempt_id=payment.top_up_attempt_id,
                    result=ChargeResult(
                        approved=False,
                        requires_action=True,
                        action_url=_confirm_url(payment),
                        reference=_intent_reference(intent_id),
                    ),
                    actor=actor,
                    now=now,
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
    return intent_action(payment=payment)[0]


def intent_action(*, payment: CardPayment) -> tuple[str | None, str | None]:
    """(client secret, PaymentMethod) for Stripe.js `confirmCardPayment` on the confirm page:
    the PaymentMethod is set only after Stripe's off-session `authentication_required` (SPEC
    M4), where the saved card must be confirmed again on-session."""
    if payment.status != Status.REQUIRES_ACTION or not payment.payment_intent_id:
        return None, None
    try:
        intent = stripe_api.retrieve_intent(payment.payment_intent_id)
    except stripe_api.StripeFailure as exc:
        raise PaymentProcessorError() from exc
    return stripe_api.action_client_secret(intent)


# --- automatic top-up by card, off-session (SPEC M4) ---------------------------------------


def can_charge_top_up(*, user_id: int) -> bool:
    """The stripe top-up backend can charge a customer with a saved card (a database read)."""
    return (
        stripe_api.configured()
        and StripeCustomer.objects.filter(user_id=user_id).exclude(payment_method_id="").exists()
    )


def _top_up_result(payment: CardPayment) -> ChargeResult:
    reference = _intent_reference(payment.payment_intent_id)
    if payment.ledger_entry_id is not None:
        return ChargeResult(approved=True, reference=reference, ledger_reference=reference)
    if payment.status == Status.REQUIRES_ACTION:
        return ChargeResult(
            approved=False,
            requires_action=True,
            action_url=_confirm_url(payment),
            reference=reference,
        )
    if payment.status == Status.FAILED:
        return ChargeResult(
            approved=False,
            decline_reason=payment.failure_code or "card_declined",
            reference=reference,
        )
    return ChargeResult(approved=False, pending=True, reference=reference)


def charge_top_up(
    *, attempt_id: int, user_id: int, amount_micros: int, now: datetime
) -> ChargeResult:
    """Charge an auto top-up attempt to the customer's saved card, off-session (SPEC M4).

    1. The attempt's card payment (one per attempt: unique) is recorded and committed first,
       so whatever happens next, the PaymentIntent's metadata finds it.
    2. With no transaction open and no row lock held, Stripe is asked — unless a charge for it
       was already sent: then its PaymentIntent is looked up by our id in its metadata first
       (a crash or a timeout between the call and the record), and a charge sent moments ago
       and not found yet is left to finish (never a second charge on localstripe, which ignores
       the idempotency key `top-up-attempt-<id>`).
    3. The outcome is recorded on the card payment and the attempt in one transaction
       (`_apply_intent`: succeeded → one `top_up` entry per PaymentIntent; authentication
       required → `requires_action` with the confirm page; declined → the decline code).
    Safe to repeat: a settled payment only reports its outcome again."""
    customer = StripeCustomer.objects.filter(user_id=user_id).first()
    payment = CardPayment.objects.filter(top_up_attempt_id=attempt_id).first()
    if payment is None:
        if customer is None or not customer.payment_method_id or not stripe_api.configured():
            return ChargeResult(approved=False, decline_reason="no_payment_method")
        try:
            with transaction.atomic(durable=True):
                payment = CardPayment.objects.create(
                    user_id=user_id,
                    amount_micros=amount_micros,
                    top_up_attempt_id=attempt_id,
                    payment_method_id=customer.payment_method_id,
                    card_brand=customer.card_brand,
                    card_last4=customer.card_last4,
                    card_settled_at=now,  # the saved card: never detached after a top-up
                    created_at=now,
                    updated_at=now,
                )
                record_event(
                    actor=TOP_UP_ACTOR,
                    subject=payment,
                    event_type="card_payment.created",
                    now=now,
                    new={"amount_micros": amount_micros, "top_up_attempt_id": attempt_id},
                )
        except IntegrityError:  # a concurrent run made it
            payment = CardPayment.objects.get(top_up_attempt_id=attempt_id)
    if payment.status != Status.PENDING:
        return _top_up_result(payment)
    try:
        intent = None
        if payment.payment_intent_id:
            intent = stripe_api.retrieve_intent(payment.payment_intent_id)
        elif payment.charge_started_at is not None:
            intent = stripe_api.find_intent_for_payment(
                payment.pk, customer_id=customer.customer_id if customer else None
            )
            if intent is None and now - payment.charge_started_at < CHARGE_IN_FLIGHT:
                return _top_up_result(payment)  # pending: maybe still in flight
        if intent is None:
            if customer is None or not customer.payment_method_id:
                _record_decline(
                    payment_id=payment.pk,
                    code="no_payment_method",
                    payment_intent_id=None,
                    actor=TOP_UP_ACTOR,
                    now=now,
                )
                return _top_up_result(CardPayment.objects.get(pk=payment.pk))
            CardPayment.objects.filter(pk=payment.pk).update(charge_started_at=now)
            intent = stripe_api.charge_off_session(
                payment_id=payment.pk,
                attempt_id=attempt_id,
                user_id=user_id,
                amount_cents=payment.amount_micros // CENT_MICROS,
                customer_id=customer.customer_id,
                payment_method_id=payment.payment_method_id,
            )
    except stripe_api.Declined as declined:
        _record_decline(
            payment_id=payment.pk,
            code=declined.code,
            payment_intent_id=declined.payment_intent_id,
            actor=TOP_UP_ACTOR,
            now=now,
        )
        return _top_up_result(CardPayment.objects.get(pk=payment.pk))
    except stripe_api.StripeFailure:
        # No answer: the attempt stays pending; the next sweep in grace (or the webhook)
        # finds the PaymentIntent, if one was made, by its metadata.
        return _top_up_result(payment)
    return _top_up_result(
        _record_intent(payment_id=payment.pk, intent=intent, actor=TOP_UP_ACTOR, now=now)
    )


# --- refunds (SPEC M5) ----------------------------------------------------------------------

_REFUNDABLE = (Status.SUCCEEDED, Status.PARTIALLY_REFUNDED)


def _refunded_status(payment: CardPayment) -> str:
    if payment.refunded_micros <= 0:
        return Status.SUCCEEDED
    if payment.refunded_micros >= payment.amount_micros:
        return Status.REFUNDED
    return Status.PARTIALLY_REFUNDED


def _change_refunded(payment: CardPayment, delta_micros: int, *, now: datetime) -> dict:
    """Add `delta_micros` to the payment's refunded total (negative when a refund is reversed)
    and set its status from the new total (M5); saves the payment under the caller's lock and
    returns the old values for the audit event."""
    old = {"status": payment.status, "refunded_micros": payment.refunded_micros}
    payment.refunded_micros += delta_micros
    payment.status = _refunded_status(payment)
    payment.updated_at = now
    payment.save(update_fields=["refunded_micros", "status", "updated_at"])
    return old


def refund_card_payment(
    *, payment_id: int, amount_micros: int, reason: str, actor: str, now: datetime
) -> Refund:
    """Refund (part of) a card payment (SPEC M5). The amount must fit both what is left
    unrefunded of the payment and the customer's current balance (credits already spent are not
    refunded). In one transaction, under the locks credit account → payment: the negative
    `refund` ledger entry, the `Refund` record, the payment's refunded amount and status, and
    the audit event naming the staff member. Then, with no transaction open, Stripe is asked
    (idempotency key `refund-<id>`) and its answer settles the refund (`_settle_refund`); no
    answer leaves it pending for the webhook or `sync_refund`. Returns the refund."""
    reason = (reason or "").strip()
    if not reason:
        raise RefundReasonRequired()
    if amount_micros <= 0 or amount_micros % CENT_MICROS:
        raise InvalidRefundAmount()
    _require_payments()
    with transaction.atomic(durable=True):
        user_id = (
            CardPayment.objects.filter(pk=payment_id).values_list("user_id", flat=True).first()
        )
        if user_id is None:
            raise PaymentNotRefundable("No such card payment.")
        balance = lock_credit_account(user_id=user_id) or 0
        payment = CardPayment.objects.select_for_update().get(pk=payment_id)
        if payment.status not in _REFUNDABLE or not payment.payment_intent_id:
            raise PaymentNotRefundable()
        unrefunded = payment.amount_micros - payment.refunded_micros
        if amount_micros > unrefunded:
            raise RefundExceedsPayment(
                f"At most {display_usd(unrefunded)} of this payment is left to refund."
            )
        if amount_micros > balance:
            raise RefundExceedsBalance(
                f"The customer's balance is {display_usd(balance)}: credits already spent are "
                f"not refunded, so at most {display_usd(min(balance, unrefunded))} can be refunded."
            )
        refund_id = sql.execute(f"SELECT {sql.next_id(Refund)}")[0]
        try:
            entry = debit_refund(
                user_id=user_id,
                amount_micros=amount_micros,
                refund_id=refund_id,
                actor=actor,
                now=now,
                reason=f"Refund of card payment #{payment.pk}: {reason}",
            )
        except InsufficientCredits as exc:  # the balance was read under the same lock
            raise RefundExceedsBalance() from exc
        refund = Refund.objects.create(
            id=refund_id,
            payment=payment,
            amount_micros=amount_micros,
            reason=reason[:255],
            actor=actor[:100],
            ledger_entry=entry,
            created_at=now,
        )
        old = _change_refunded(payment, amount_micros, now=now)
        record_event(
            actor=actor,
            subject=refund,
            event_type="refund.created",
            now=now,
            old=old,
            new={
                "payment_id": payment.pk,
                "amount_micros": amount_micros,
                "reason": reason[:255],
                "status": payment.status,
                "refunded_micros": payment.refunded_micros,
                "balance_after_micros": entry.balance_after_micros,
            },
        )
    return _send_refund(refund_id=refund.pk, actor=actor, now=now)


def _send_refund(*, refund_id: int, actor: str, now: datetime) -> Refund:
    refund = Refund.objects.select_related("payment").get(pk=refund_id)
    try:
        answer = stripe_api.create_refund(
            refund_id=refund.pk,
            payment_id=refund.payment_id,
            payment_intent_id=refund.payment.payment_intent_id,
            amount_cents=refund.amount_micros // CENT_MICROS,
        )
    except stripe_api.RefundRefused as refused:
        _settle_refund(
            refund_id=refund.pk, status="failed", failure=refused.code, actor=actor, now=now
        )
    except stripe_api.StripeFailure:
        pass  # no answer: pending until the webhook or `sync_refund` settles it
    else:
        _settle_from_stripe(refund.pk, answer, actor=actor, now=now)
    return Refund.objects.get(pk=refund_id)


def sync_refund(*, refund_id: int, actor: str, now: datetime) -> Refund:
    """A refund Stripe never answered (still pending with no Stripe id): look it up at Stripe by
    its metadata and settle it; if Stripe never got it, send it again (same idempotency key).
    A refund with a Stripe id is re-read and settled from what Stripe says. Safe to repeat."""
    refund = Refund.objects.select_related("payment").get(pk=refund_id)
    if refund.status != Refund.Status.PENDING:
        return refund
    found = stripe_api.find_refund(
        refund_id=refund.pk, payment_intent_id=refund.payment.payment_intent_id
    )
    if found is None:
        return _send_refund(refund_id=refund.pk, actor=actor, now=now)
    _settle_from_stripe(refund.pk, found, actor=actor, now=now)
    return Refund.objects.get(pk=refund_id)


# A refund Stripe has not settled for this long is looked up by the hourly task: its webhook
# was lost, or Stripe never got the request (SPEC M5).
PENDING_REFUND_RECHECK_AFTER = timedelta(minutes=30)
REFUND_SYNC_ACTOR = "system:refund-sync"


def sync_pending_refunds(*, now: datetime, limit: int = 100) -> dict[str, int]:
    """The hourly check of refunds still pending after PENDING_REFUND_RECHECK_AFTER (oldest
    first): each is settled from what Stripe says, or sent again if Stripe never got it
    (`sync_refund`, the admin's "Check pending refunds at Stripe", without the click). One that
    Stripe cannot be asked about now stays pending for the next run. Returns counts:
    `checked`, `settled`, `still_pending`, `errors`."""
    counts = {"checked": 0, "settled": 0, "still_pending": 0, "errors": 0}
    due = (
        Refund.objects.filter(
            status=Refund.Status.PENDING, created_at__lt=now - PENDING_REFUND_RECHECK_AFTER
        )
        .order_by("created_at", "id")
        .values_list("id", flat=True)[:limit]
    )
    for refund_id in list(due):
        counts["checked"] += 1
        try:
            refund = sync_refund(refund_id=refund_id, actor=REFUND_SYNC_ACTOR, now=now)
        except Exception as exc:  # Stripe unreachable or refusing: try again next hour
            counts["errors"] += 1
            log.warning(
                "pending refund %s not checked at Stripe: %s", refund_id, type(exc).__name__
            )
            continue
        counts["settled" if refund.status != Refund.Status.PENDING else "still_pending"] += 1
    return counts


def _settle_from_stripe(refund_id: int, stripe_refund, *, actor: str, now: datetime) -> None:
    """Settle our refund from Stripe's refund object (its answer, or the one found later)."""
    _settle_refund(
        refund_id=refund_id,
        status=str(stripe_refund.get("status") or ""),
        stripe_refund_id=str(stripe_refund.get("id") or ""),
        failure=str(stripe_refund.get("failure_reason") or ""),
        actor=actor,
        now=now,
    )


def _settle_refund(
    *,
    refund_id: int,
    status: str,
    actor: str,
    now: datetime,
    stripe_refund_id: str = "",
    failure: str = "",
) -> str:
    with transaction.atomic(durable=True):
        return _apply_refund_status(
            refund_id=refund_id,
            status=status,
            stripe_refund_id=stripe_refund_id,
            failure=failure,
            actor=actor,
            now=now,
        )


def _apply_refund_status(
    *, refund_id: int, status: str, stripe_refund_id: str, failure: str, actor: str, now: datetime
) -> str:
    """Apply Stripe's status of one of our refunds, inside the caller's transaction, under the
    locks credit account → payment → refund; acts once: `succeeded` settles it (the e-mail
    after commit), `failed` / `canceled` puts the credits back (`refund_reversed`) and lowers
    the payment's refunded amount; anything else (`pending`, `requires_action`) waits."""
    row = Refund.objects.filter(pk=refund_id).values_list("payment__user_id", "payment_id").first()
    if row is None:
        return "unknown_refund"
    user_id, payment_id = row
    lock_credit_account(user_id=user_id)
    payment = CardPayment.objects.select_for_update().get(pk=payment_id)
    refund = Refund.objects.select_for_update().get(pk=refund_id)
    if stripe_refund_id and not refund.stripe_refund_id:
        refund.stripe_refund_id = stripe_refund_id[:255]
        refund.save(update_fields=["stripe_refund_id"])
    if refund.status != Refund.Status.PENDING:
        return "no_change"
    if status == "succeeded":
        refund.status = Refund.Status.SUCCEEDED
        refund.settled_at = now
        refund.save(update_fields=["status", "settled_at"])
        record_event(
            actor=actor,
            subject=refund,
            event_type="refund.succeeded",
            now=now,
            old={"status": Refund.Status.PENDING},
            new={"status": refund.status, "stripe_refund_id": refund.stripe_refund_id},
        )
        transaction.on_commit(lambda: send_refund_email(refund_id=refund_id, now=now), robust=True)
        return "refund_succeeded"
    if status in ("failed", "canceled"):
        entry = reverse_refund(
            user_id=user_id,
            amount_micros=refund.amount_micros,
            refund_id=refund.pk,
            actor=actor,
            now=now,
        )
        refund.status = Refund.Status.FAILED
        refund.failure_reason = (failure or status)[:100]
        refund.reversal_entry = entry
        refund.settled_at = now
        refund.save(update_fields=["status", "failure_reason", "reversal_entry", "settled_at"])
        old = _change_refunded(payment, -refund.amount_micros, now=now)
        record_event(
            actor=actor,
            subject=refund,
            event_type="refund.failed",
            now=now,
            old=old,
            new={
                "status": refund.status,
                "failure_reason": refund.failure_reason,
                "payment_status": payment.status,
                "refunded_micros": payment.refunded_micros,
                "balance_after_micros": entry.balance_after_micros,
            },
        )
        return "refund_reversed"
    return "no_change"


def _our_refund(obj: dict) -> Refund | None:
    """Our refund for a Stripe refund object: by its id, else by the id in its metadata."""
    refund_id = str(obj.get("id") or "")
    found = Refund.objects.filter(stripe_refund_id=refund_id).first() if refund_id else None
    if found is not None:
        return found
    ours = str((obj.get("metadata") or {}).get("refund_id") or "")
    if not ours.isdigit():
        return None
    return Refund.objects.filter(pk=int(ours), stripe_refund_id__isnull=True).first()


def _apply_refund_objects(objects: list[dict], *, now: datetime) -> tuple[str, CardPayment | None]:
    outcome, payment = "not_ours", None
    for obj in objects:
        refund = _our_refund(obj)
        if refund is None:
            # A refund made in the Stripe Dashboard: not reflected in the ledger (docs).
            log.warning("Stripe refund event for a refund we did not make; not applied")
            continue
        payment = refund.payment
        outcome = _apply_refund_status(
            refund_id=refund.pk,
            status=str(obj.get("status") or ""),
            stripe_refund_id=str(obj.get("id") or ""),
            failure=str(obj.get("failure_reason") or ""),
            actor=WEBHOOK_ACTOR,
            now=now,
        )
    return outcome, payment


def send_refund_email(*, refund_id: int, now: datetime) -> bool:
    """One e-mail per succeeded refund (SPEC M5, M9: amount, date, balance after), after commit;
    a repeat sends nothing (`email_sent_at` is claimed first)."""
    claimed = Refund.objects.filter(
        pk=refund_id, status=Refund.Status.SUCCEEDED, email_sent_at__isnull=True
    ).update(email_sent_at=now)
    if not claimed:
        return False
    refund = Refund.objects.select_related("payment__user", "ledger_entry").get(pk=refund_id)
    user = refund.payment.user
    if user.deleted_at is not None:
        return False
    context = {
        "amount": display_usd(refund.amount_micros),
        "balance_after": display_usd(refund.ledger_entry.balance_after_micros),
        "date": refund.settled_at or now,
        "refund": refund,
        "payment": refund.payment,
    }
    send_mail(
        subject=f"Refund: {context['amount']} back to your card",
        message=render_to_string("payments/email/refund.txt", context),
        html_message=render_to_string("payments/email/refund.html", context),
        from_email=None,
        recipient_list=[user.email],
    )
    return True


# --- the webhook (SPEC M2) ----------------------------------------------------------------

_INTENT_EVENTS = {
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "payment_intent.requires_action",
    "payment_intent.canceled",
    "payment_intent.processing",
}
# SPEC M5: Stripe's refund events settle our refunds (localstripe sends none, SPEC M8).
_REFUND_EVENTS = {"refund.updated", "refund.created", "refund.failed", "charge.refund.updated"}


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
        elif event_type in _REFUND_EVENTS and obj.get("object") == "refund":
            outcome, record.payment = _apply_refund_objects([obj], now=now)
        elif event_type == "charge.refunded" and obj.get("object") == "charge":
            refunds = ((obj.get("refunds") or {}).get("data")) or []
            outcome, record.payment = _apply_refund_objects(
                [r for r in refunds if isinstance(r, dict)], now=now
            )
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
