"""Credit accounts, the ledger and auto top-up attempts in the admin, read-only (SPEC P4, S5).

Balances change only through the ledger (`grant_credits`, purchases, renewals, top-ups); the
admin shows amounts in USD, never microdollars.
"""

from __future__ import annotations

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from adminops.adminkit import ReadOnlyAdmin, usd, usd_column, user_email_column
from billing.models import CreditAccount, LedgerEntry, TopUpAttempt


def ledger_entry_link(entry: LedgerEntry | None) -> str:
    """A ledger entry as operators read it: number, kind and USD amount (never microdollars)."""
    if entry is None:
        return "-"
    url = reverse("admin:billing_ledgerentry_change", args=[entry.pk])
    return format_html(
        '<a href="{}">#{} {} {}</a>',
        url,
        entry.pk,
        entry.get_kind_display(),
        usd(entry.amount_micros),
    )


@admin.register(CreditAccount)
class CreditAccountAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "user_email",
        "balance",
        "auto_top_up_enabled",
        "auto_top_up_amount",
        "updated_at",
    )
    list_select_related = ("user",)
    list_filter = ("auto_top_up_enabled",)
    search_fields = ("user__email",)
    ordering = ("-id",)
    fields = (
        "id",
        "user",
        "balance",
        "auto_top_up_enabled",
        "auto_top_up_amount",
        "created_at",
        "updated_at",
    )
    readonly_fields = fields

    user_email = user_email_column("user")
    balance = usd_column("balance_micros", "balance")
    auto_top_up_amount = usd_column(
        "auto_top_up_amount_micros", "auto top-up amount", sortable=False
    )


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = (
        "created_at",
        "user_email",
        "kind",
        "amount",
        "balance_after",
        "reason",
        "actor",
        "reference",
    )
    list_select_related = ("account__user",)
    list_filter = ("kind", "created_at")
    date_hierarchy = "created_at"
    search_fields = ("account__user__email", "=reference", "=actor")
    ordering = ("-created_at", "-id")
    show_full_result_count = False
    fields = (
        "id",
        "account",
        "kind",
        "amount",
        "balance_after",
        "reason",
        "actor",
        "reference",
        "created_at",
    )
    readonly_fields = fields

    user_email = user_email_column("account__user")
    amount = usd_column("amount_micros", "amount")
    balance_after = usd_column("balance_after_micros", "balance after", sortable=False)


@admin.register(TopUpAttempt)
class TopUpAttemptAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "user_email",
        "subscription_id",
        "due_at",
        "amount",
        "backend",
        "status",
        "created_at",
        "resolved_at",
    )
    list_select_related = ("account__user",)
    list_filter = ("status", "backend")
    search_fields = ("account__user__email", "subscription_id__exact")
    ordering = ("-created_at", "-id")
    fields = (
        "id",
        "account",
        "subscription_id",
        "due_at",
        "amount",
        "backend",
        "status",
        "ledger",
        "created_at",
        "resolved_at",
    )
    readonly_fields = fields

    user_email = user_email_column("account__user")
    amount = usd_column("amount_micros", "amount")

    @admin.display(description="ledger entry")
    def ledger(self, obj: TopUpAttempt) -> str:
        return ledger_entry_link(obj.ledger_entry)
