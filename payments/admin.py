"""Card payments, refunds, Stripe customers and webhook events in the admin (SPEC M5, M9, O1).

Lists and detail pages are read-only: nothing secret is stored, so nothing secret can show.
The one write is "Refund" on a card payment (M5), for staff with `payments.refund_cardpayment`
(the Billing role, and superusers): a form with the amount (default: the most M5 allows) and a
required reason, a confirmation page with the balance before and after, then the service.
Support sees payments read-only.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone

from adminops.adminkit import ReadOnlyAdmin, audit_links, usd, usd_column, user_email_column
from billing.selectors import credit_account_for
from codingplans.errors import DomainError
from codingplans.money import InvalidAmount, format_usd, usd_to_micros
from payments import services, stripe_api
from payments.models import CardPayment, Refund, StripeCustomer, WebhookEvent

REFUND_PERMISSION = "payments.refund_cardpayment"


def refund_limits(payment: CardPayment) -> dict[str, int]:
    """SPEC M5: a refund is at most the payment's unrefunded amount and the current balance."""
    balance = credit_account_for(payment.user).balance_micros
    unrefunded = payment.amount_micros - payment.refunded_micros
    return {"balance": balance, "unrefunded": unrefunded, "most": max(0, min(balance, unrefunded))}


@admin.register(CardPayment)
class CardPaymentAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "user",
        "amount",
        "status",
        "refunded",
        "top_up",
        "failure_code",
        "payment_intent_id",
        "created_at",
        "succeeded_at",
    )
    list_filter = ("status",)
    list_select_related = ("user",)
    search_fields = ("payment_intent_id", "user__email")
    ordering = ("-id",)
    exclude = ("payment_method_id",)

    amount = usd_column("amount_micros", "amount")
    refunded = usd_column("refunded_micros", "refunded", sortable=False)

    @admin.display(description="auto top-up", boolean=True)
    def top_up(self, obj: CardPayment) -> bool:
        return obj.top_up_attempt_id is not None

    def has_refund_permission(self, request) -> bool:
        return request.user.has_perm(REFUND_PERMISSION)

    def get_urls(self):
        return [
            path(
                "<int:payment_id>/refund/",
                self.admin_site.admin_view(self.refund_view),
                name="payments_cardpayment_refund",
            ),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        payment = (
            CardPayment.objects.filter(pk=object_id).first() if str(object_id).isdigit() else None
        )
        extra = {}
        if payment is not None:
            extra["audit_links"] = audit_links(request, payment)
            if payment.status in (
                CardPayment.Status.SUCCEEDED,
                CardPayment.Status.PARTIALLY_REFUNDED,
            ) and self.has_refund_permission(request):
                extra["refund_url"] = reverse(
                    "admin:payments_cardpayment_refund", args=[payment.pk]
                )
        return super().change_view(
            request, object_id, form_url, extra_context={**(extra_context or {}), **extra}
        )

    def refund_view(self, request, payment_id: int):
        """SPEC M5: the form, then a confirmation with the balance before and after, then the
        refund (ledger entry and Refund record first, then Stripe)."""
        if not self.has_refund_permission(request):
            raise PermissionDenied
        payment = get_object_or_404(CardPayment.objects.select_related("user"), pk=payment_id)
        change_url = reverse("admin:payments_cardpayment_change", args=[payment.pk])
        limits = refund_limits(payment)
        amount_text = format_usd(limits["most"])
        reason = ""
        error = ""
        stage = "form"
        amount = None
        if request.method == "POST":
            amount_text = (request.POST.get("amount_usd") or "").strip()
            reason = (request.POST.get("reason") or "").strip()
            try:
                amount = usd_to_micros(amount_text)
            except InvalidAmount:
                error = "Enter the amount in US dollars, e.g. 12.50."
            if not error and not reason:
                error = "Give a reason; it is kept in the ledger and the audit trail."
            elif not error and not 0 < amount <= limits["most"]:
                error = (
                    f"The refund must be more than $0.00 and at most {usd(limits['most'])}: the "
                    f"unrefunded amount is {usd(limits['unrefunded'])} and the customer's "
                    f"balance {usd(limits['balance'])} (credits already spent are not refunded)."
                )
            if not error and request.POST.get("confirm") == "yes":
                try:
                    refund = services.refund_card_payment(
                        payment_id=payment.pk,
                        amount_micros=amount,
                        reason=reason,
                        actor=f"staff:{request.user.pk}",
                        now=timezone.now(),
                    )
                except DomainError as exc:
                    error = exc.message
                else:
                    level, outcome = {
                        Refund.Status.SUCCEEDED: (messages.SUCCESS, "succeeded at Stripe"),
                        Refund.Status.FAILED: (
                            messages.ERROR,
                            f"was refused by Stripe ({refund.failure_reason}); the credits were "
                            "put back",
                        ),
                    }.get(
                        refund.status,
                        (messages.WARNING, "is pending at Stripe; its webhook settles it"),
                    )
                    self.message_user(
                        request,
                        f"Refund #{refund.pk} of {usd(refund.amount_micros)} {outcome}.",
                        level,
                    )
                    return HttpResponseRedirect(change_url)
            elif not error:
                stage = "confirm"
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Refund card payment #{payment.pk}",
            "payment": payment,
            "change_url": change_url,
            "limits": limits,
            "amount_usd": amount_text,
            "amount_micros": amount,
            "balance_after": limits["balance"] - (amount or 0),
            "reason": reason,
            "error": error,
            "stage": stage,
            "refunds": payment.refunds.order_by("-id"),
        }
        return TemplateResponse(request, "admin/payments/cardpayment/refund.html", context)


@admin.register(Refund)
class RefundAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "payment",
        "user_email",
        "amount",
        "status",
        "reason",
        "actor",
        "stripe_refund_id",
        "created_at",
        "settled_at",
    )
    list_filter = ("status",)
    list_select_related = ("payment__user",)
    search_fields = ("payment__user__email", "stripe_refund_id", "=actor")
    ordering = ("-id",)
    actions = ["check_at_stripe"]

    user_email = user_email_column("payment__user")
    amount = usd_column("amount_micros", "amount")

    def get_actions(self, request):
        # ReadOnlyAdmin has no actions; this one needs the refund permission.
        if not request.user.has_perm(REFUND_PERMISSION):
            return {}
        return {
            "check_at_stripe": (
                type(self).check_at_stripe,
                "check_at_stripe",
                "Check pending refunds at Stripe",
            )
        }

    def check_at_stripe(self, request, queryset):
        """A refund Stripe never answered: look it up (or send it again) and settle it."""
        if not request.user.has_perm(REFUND_PERMISSION):
            raise PermissionDenied
        settled = 0
        for refund in queryset.filter(status=Refund.Status.PENDING):
            try:
                after = services.sync_refund(
                    refund_id=refund.pk, actor=f"staff:{request.user.pk}", now=timezone.now()
                )
            except stripe_api.StripeFailure:  # Stripe unreachable: stays pending
                continue
            settled += after.status != Refund.Status.PENDING
        self.message_user(request, f"{settled} pending refund(s) settled.", messages.INFO)


@admin.register(StripeCustomer)
class StripeCustomerAdmin(ReadOnlyAdmin):
    list_display = ("id", "user", "customer_id", "card_brand", "card_last4", "updated_at")
    list_select_related = ("user",)
    search_fields = ("customer_id", "user__email")


@admin.register(WebhookEvent)
class WebhookEventAdmin(ReadOnlyAdmin):
    list_display = ("id", "type", "event_id", "object_id", "payment", "outcome", "received_at")
    list_filter = ("type", "outcome")
    search_fields = ("event_id", "object_id")
    ordering = ("-id",)
