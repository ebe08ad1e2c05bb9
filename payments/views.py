"""The card-payment parts of /credits (SPEC M1, M3, M9) and the confirm page (M4's link).

Forms post here and work without JavaScript for the saved card; a new card needs Stripe.js
(static/js/payments.js collects it with a SetupIntent, then submits the same form with the
PaymentMethod id). The result is shown on /credits after the redirect.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from accounts.errors import EmailUnverified
from adminops.audit import actor_for
from codingplans.errors import DomainError
from codingplans.money import display_usd
from payments import selectors, services, stripe_api
from payments.models import CardPayment

PRESETS_USD = ("10", "25", "50", "100")
CREDITS_URL = "/credits/"


def credits_section(request) -> dict | None:
    """The "Add credits" card, the saved card and the card payments on /credits."""
    if not request.user.is_authenticated:
        return None
    payments, _ = selectors.payments_page(request.user)
    return {
        "template": "payments/_credits_section.html",
        "context": {
            "available": stripe_api.configured(),
            "publishable_key": settings.STRIPE_PUBLISHABLE_KEY,
            "stripe_js_url": settings.STRIPE_JS_URL,
            "saved_card": selectors.saved_card_for(request.user),
            "payments": payments,
            "presets": PRESETS_USD,
        },
    }


def _result_message(request, payment: CardPayment) -> None:
    from billing.selectors import credit_account_for

    if payment.status == CardPayment.Status.SUCCEEDED:
        balance = credit_account_for(request.user).balance_micros
        messages.success(
            request,
            f"Payment succeeded: {display_usd(payment.amount_micros)} added. "
            f"Your balance is now {display_usd(balance)}.",
        )
    elif payment.status == CardPayment.Status.FAILED:
        messages.error(request, services.decline_message(payment.failure_code))
    elif payment.status == CardPayment.Status.REQUIRES_ACTION:
        messages.warning(request, "Your bank asks you to authenticate this payment.")
    else:
        messages.info(
            request, "The payment is still being processed; the credits arrive when it clears."
        )


@login_required
@require_POST
def pay(request):
    if not request.user.email_verified:  # issue 19, SPEC A2 (the banner offers a new link)
        messages.error(request, EmailUnverified.default_message)
        return redirect(CREDITS_URL)
    data = request.POST
    amount = data.get("amount", "")
    if amount == "custom" or not amount:
        amount = data.get("amount_custom", "").strip()
    payment_method_id = data.get("payment_method_id", "").strip() or None
    if data.get("card") == "new" and payment_method_id is None:
        messages.error(
            request,
            "Entering a new card needs JavaScript (the card goes straight to Stripe, never to "
            "us). Turn JavaScript on, or pay with your saved card.",
        )
        return redirect(CREDITS_URL)
    try:
        payment, _secret = services.pay_by_card(
            user=request.user,
            amount_micros=services.parse_amount(amount),
            payment_method_id=payment_method_id,
            save_card=data.get("save_card") == "on",
            actor=actor_for(request.user),
            now=timezone.now(),
        )
    except DomainError as exc:
        messages.error(request, exc.message)
        return redirect(CREDITS_URL)
    if payment.status == CardPayment.Status.REQUIRES_ACTION:
        return redirect(f"/credits/payments/{payment.pk}/confirm/")
    _result_message(request, payment)
    return redirect(CREDITS_URL)


@login_required
@require_POST
def remove_card(request):
    try:
        turned_off = services.remove_saved_card(user=request.user, now=timezone.now())
    except DomainError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(
            request,
            "The saved card was removed."
            + (
                " Automatic top-up was turned off: it charges the saved card. Add a card and "
                "turn it on again to keep it."
                if turned_off
                else ""
            ),
        )
    return redirect(CREDITS_URL)


@never_cache  # the page carries the PaymentIntent's client secret for Stripe.js
@login_required
def confirm(request, payment_id: int):
    """Finish a payment that needs authentication (SPEC M4, M9): Stripe.js completes it, then
    the form posts back here and the server re-reads the PaymentIntent and records it."""
    payment = selectors.payment_for(request.user, payment_id)
    now = timezone.now()
    if request.method == "POST":
        try:
            payment = services.refresh_payment(
                user=request.user, payment_id=payment.pk, actor=actor_for(request.user), now=now
            )
        except DomainError as exc:
            messages.error(request, exc.message)
            return redirect(f"/credits/payments/{payment.pk}/confirm/")
        if payment.status != CardPayment.Status.REQUIRES_ACTION:
            _result_message(request, payment)
            return redirect(CREDITS_URL)
    secret = payment_method = None
    error = None
    try:
        secret, payment_method = services.intent_action(payment=payment)
    except DomainError as exc:
        error = exc.message
    return render(
        request,
        "payments/confirm.html",
        {
            "payment": payment,
            "client_secret": secret,
            "payment_method": payment_method,
            "error": error,
            "publishable_key": settings.STRIPE_PUBLISHABLE_KEY,
            "stripe_js_url": settings.STRIPE_JS_URL,
        },
    )
