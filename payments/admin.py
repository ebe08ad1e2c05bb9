"""Read-only admin lists of card payments, Stripe customers and webhook events (SPEC M9, O1).
Nothing secret is stored, so nothing secret can show; changes go through the services."""

from django.contrib import admin

from adminops.adminkit import ReadOnlyAdmin, usd
from payments.models import CardPayment, StripeCustomer, WebhookEvent


@admin.register(CardPayment)
class CardPaymentAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "user",
        "amount",
        "status",
        "failure_code",
        "payment_intent_id",
        "created_at",
        "succeeded_at",
    )
    list_filter = ("status",)
    list_select_related = ("user",)
    search_fields = ("payment_intent_id", "user__email")
    ordering = ("-id",)

    @admin.display(description="amount", ordering="amount_micros")
    def amount(self, obj: CardPayment) -> str | None:
        return usd(obj.amount_micros)


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
