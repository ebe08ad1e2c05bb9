"""Subscriptions, charged terms and billing sweep runs in the admin, read-only (SPEC L, O2).

State changes go through services and commands (`terminate_subscription`, `run_billing_sweep`);
no credential secret is shown: the credential appears only as its number and state.
"""

from __future__ import annotations

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from adminops.adminkit import ReadOnlyAdmin, clean_text, usd
from billing.admin import ledger_entry_link
from subscriptions.models import ChargedTerm, Subscription, SweepRun


class PlanFilter(admin.SimpleListFilter):
    title = "plan"
    parameter_name = "plan_id"

    def lookups(self, request, model_admin):
        from subscriptions.catalog import all_plans

        return [(plan.plan_id, plan.name) for plan in all_plans()]

    def queryset(self, request, queryset):
        return queryset.filter(plan_id=self.value()) if self.value() else queryset


@admin.register(Subscription)
class SubscriptionAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "user_email",
        "plan_id",
        "status",
        "current_period_end",
        "grace_deadline",
        "cancel_at_period_end",
    )
    list_select_related = ("user",)
    list_filter = ("status", PlanFilter, "cancel_at_period_end")
    search_fields = ("user__email", "id__exact")
    ordering = ("-id",)
    fields = (
        "id",
        "user",
        "plan_id",
        "provider_id",
        "status",
        "price",
        "billing_period_days",
        "credential_link",
        "current_period_start",
        "current_period_end",
        "cancel_at_period_end",
        "grace_deadline",
        "top_up_attempted_for",
        "canceled_at",
        "cancellation_reason",
        "created_at",
        "updated_at",
    )
    readonly_fields = fields

    def get_queryset(self, request):
        # (A select_related here replaces list_select_related, so it names both.)
        return (
            super()
            .get_queryset(request)
            .select_related("user", "credential")
            .defer("credential__encrypted_key", "credential__fingerprint")
        )

    @admin.display(description="user", ordering="user__email")
    def user_email(self, obj: Subscription) -> str:
        return obj.user.email

    @admin.display(description="price")
    def price(self, obj: Subscription) -> str | None:
        return f"{usd(obj.price_micros)} / {obj.billing_period_days} days"

    @admin.display(description="credential")
    def credential_link(self, obj: Subscription) -> str:
        url = reverse("admin:inventory_credential_change", args=[obj.credential_id])
        return format_html(
            '<a href="{}">#{} ({})</a>', url, obj.credential_id, obj.credential.get_state_display()
        )


@admin.register(ChargedTerm)
class ChargedTermAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "subscription_id",
        "user_email",
        "amount",
        "period_start",
        "period_end",
        "charged_at",
        "description",
    )
    list_select_related = ("subscription__user",)
    search_fields = ("subscription__user__email", "subscription__id__exact")
    date_hierarchy = "charged_at"
    ordering = ("-charged_at", "-id")
    fields = (
        "id",
        "subscription",
        "amount",
        "period_start",
        "period_end",
        "charged_at",
        "description",
        "ledger",
    )
    readonly_fields = fields

    @admin.display(description="user", ordering="subscription__user__email")
    def user_email(self, obj: ChargedTerm) -> str:
        return obj.subscription.user.email

    @admin.display(description="amount", ordering="amount_micros")
    def amount(self, obj: ChargedTerm) -> str | None:
        return usd(obj.amount_micros)

    @admin.display(description="ledger entry")
    def ledger(self, obj: ChargedTerm) -> str:
        return ledger_entry_link(obj.ledger_entry)


@admin.register(SweepRun)
class SweepRunAdmin(ReadOnlyAdmin):
    list_display = ("id", "trigger", "started_at", "finished_at", "summary", "error_total")
    list_filter = ("trigger",)
    date_hierarchy = "started_at"
    ordering = ("-started_at", "-id")
    fields = ("id", "trigger", "started_at", "finished_at", "as_of", "summary", "error_list")
    readonly_fields = fields

    @admin.display(description="counts")
    def summary(self, obj: SweepRun) -> str:
        counts = obj.counts or {}
        return ", ".join(f"{key} {value}" for key, value in sorted(counts.items())) or "-"

    @admin.display(description="errors")
    def error_total(self, obj: SweepRun) -> int:
        return obj.error_count

    @admin.display(description="errors by subscription")
    def error_list(self, obj: SweepRun) -> str:
        items = obj.errors or []
        return clean_text(
            "; ".join(
                f"subscription {item.get('subscription_id')}: {item.get('error')}"
                for item in items
                if isinstance(item, dict)
            )
            or "-"
        )
