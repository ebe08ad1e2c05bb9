"""Credit accounts, the ledger and auto top-up attempts in the admin, read-only (SPEC P4, S5).

Balances change only through the ledger (`grant_credits`, purchases, renewals, top-ups); the
admin shows amounts in USD, never microdollars. The one write is "Adjust credits" on a credit
account (SPEC M6), for staff with `billing.adjust_credits` (the Billing role, and superusers):
grant or remove an amount with a reason, never below zero.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from adminops.adminkit import ReadOnlyAdmin, audit_links, usd, usd_column, user_email_column
from billing.models import CreditAccount, LedgerEntry, TopUpAttempt
from billing.services import adjust_credits
from codingplans.errors import DomainError
from codingplans.money import InvalidAmount, usd_to_micros

ADJUST_PERMISSION = "billing.adjust_credits"


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

    # -- adjustments (SPEC M6) --

    def has_adjust_permission(self, request) -> bool:
        return request.user.has_perm(ADJUST_PERMISSION)

    def get_urls(self):
        return [
            path(
                "<int:account_id>/adjust/",
                self.admin_site.admin_view(self.adjust_view),
                name="billing_creditaccount_adjust",
            ),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        account = (
            CreditAccount.objects.filter(pk=object_id).first() if str(object_id).isdigit() else None
        )
        extra = {}
        if account is not None:
            extra["audit_links"] = audit_links(request, account)
            if self.has_adjust_permission(request):
                extra["adjust_url"] = reverse(
                    "admin:billing_creditaccount_adjust", args=[account.pk]
                )
        return super().change_view(
            request, object_id, form_url, extra_context={**(extra_context or {}), **extra}
        )

    def adjust_view(self, request, account_id: int):
        """Grant or remove credits with a reason (M6): an `adjustment` ledger entry and an audit
        event naming the staff member; a removal is at most the balance (the form says so)."""
        if not self.has_adjust_permission(request):
            raise PermissionDenied
        account = get_object_or_404(CreditAccount.objects.select_related("user"), pk=account_id)
        change_url = reverse("admin:billing_creditaccount_change", args=[account.pk])
        direction = request.POST.get("direction", "grant")
        amount_text = (request.POST.get("amount_usd") or "").strip()
        reason = (request.POST.get("reason") or "").strip()
        error = ""
        if request.method == "POST":
            try:
                amount = usd_to_micros(amount_text)
            except InvalidAmount:
                error = "Enter the amount in US dollars, e.g. 12.50."
            else:
                try:
                    entry = adjust_credits(
                        user=account.user,
                        amount_micros=-amount if direction == "remove" else amount,
                        reason=reason,
                        actor=f"staff:{request.user.pk}",
                        now=timezone.now(),
                    )
                except DomainError as exc:
                    error = exc.message
                else:
                    verb = "removed from" if direction == "remove" else "granted to"
                    self.message_user(
                        request,
                        f"{usd(abs(entry.amount_micros))} {verb} {account.user.email}; balance "
                        f"now {usd(entry.balance_after_micros)}.",
                        messages.SUCCESS,
                    )
                    return HttpResponseRedirect(change_url)
        account.refresh_from_db()
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Adjust the credits of {account.user.email}",
            "account": account,
            "change_url": change_url,
            "direction": direction,
            "amount_usd": amount_text,
            "reason": reason,
            "error": error,
        }
        return TemplateResponse(request, "admin/billing/creditaccount/adjust.html", context)


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
