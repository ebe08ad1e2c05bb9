"""Subscriptions, charged terms and billing sweep runs in the admin, read-only (SPEC L, O2).

The one write is the operator's immediate termination (L6): a confirmation page that says what
will happen, then `terminate_subscription` (the service), then the result. No credential secret
is shown: the credential appears only as its number and state.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.http import urlencode

from adminops.adminkit import (
    ReadOnlyAdmin,
    audit_links,
    audit_url,
    clean_text,
    usd,
    usd_column,
    user_email_column,
)
from billing.admin import ledger_entry_link
from byok.models import ByokKey
from codingplans.errors import DomainError
from subscriptions.actions import terminate_subscription
from subscriptions.errors import NoStockForReplacement
from subscriptions.models import LIVE_STATUSES, ChargedTerm, Subscription, SweepRun
from subscriptions.replacement import alert_staff_no_stock, replace_credential
from subscriptions.selectors import due_subscriptions

TERMINATE_PERMISSION = "subscriptions.terminate_subscription"
REPLACE_PERMISSION = "subscriptions.replace_credential"
MAX_TERMINATE_AT_ONCE = 100


class PlanFilter(admin.SimpleListFilter):
    title = "plan"
    parameter_name = "plan_id"

    def lookups(self, request, model_admin):
        from catalog import all_plans

        return [(plan.plan_id, plan.name) for plan in all_plans()]

    def queryset(self, request, queryset):
        return queryset.filter(plan_id=self.value()) if self.value() else queryset


class DueFilter(admin.SimpleListFilter):
    """What the next sweep will act on (the admin home links here, SPEC O2)."""

    title = "due"
    parameter_name = "due"

    def lookups(self, request, model_admin):
        return [("now", "Due now (period ended, live)")]

    def queryset(self, request, queryset):
        if self.value() == "now":
            return due_subscriptions(timezone.now(), among=queryset)
        return queryset


class CredentialProblemFilter(admin.SimpleListFilter):
    """Live subscriptions whose plan key the provider rejects (SPEC H3): waiting for a replacement,
    usually for want of stock. The admin home links here."""

    title = "credential problem"
    parameter_name = "credential_problem"

    def lookups(self, request, model_admin):
        return [("yes", "Key rejected, waiting for replacement")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(
                status__in=LIVE_STATUSES, credential_problem_at__isnull=False
            ).order_by("credential_problem_at", "id")
        return queryset


@admin.action(
    description="Replace the credential of selected subscriptions now", permissions=["replace"]
)
def replace_selected(modeladmin, request, queryset):
    """SPEC H3 as a staff action: a fresh credential of the plan for each selected live
    subscription (no charge); with no stock, staff are e-mailed once and it stays listed."""
    actor = f"staff:{request.user.pk}"
    for pk in queryset.order_by("id").values_list("id", flat=True)[:MAX_TERMINATE_AT_ONCE]:
        now = timezone.now()
        try:
            outcome = replace_credential(subscription_id=pk, actor=actor, now=now)
        except NoStockForReplacement as exc:
            alert_staff_no_stock(subscription_id=pk, now=now)
            modeladmin.message_user(request, f"Subscription #{pk}: {exc.message}", messages.ERROR)
        except DomainError as exc:
            modeladmin.message_user(request, f"Subscription #{pk}: {exc.message}", messages.ERROR)
        else:
            modeladmin.message_user(
                request,
                f"Subscription #{pk}: credential #{outcome.old_credential_id} replaced by "
                f"#{outcome.new_credential_id}; the old one is queued for revocation.",
                messages.SUCCESS,
            )


@admin.action(description="Terminate selected subscriptions now…", permissions=["terminate"])
def terminate_selected(modeladmin, request, queryset):
    ids = list(queryset.order_by("id").values_list("id", flat=True)[: MAX_TERMINATE_AT_ONCE + 1])
    if len(ids) > MAX_TERMINATE_AT_ONCE:
        modeladmin.message_user(
            request,
            f"Select at most {MAX_TERMINATE_AT_ONCE} subscriptions at a time.",
            messages.ERROR,
        )
        return None
    query = urlencode({"ids": ",".join(str(pk) for pk in ids)})
    return HttpResponseRedirect(f"{reverse('admin:subscriptions_subscription_terminate')}?{query}")


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
        "credential_problem_at",
    )
    list_select_related = ("user",)
    list_filter = ("status", PlanFilter, "cancel_at_period_end", DueFilter, CredentialProblemFilter)
    search_fields = ("user__email", "id__exact")
    actions = [terminate_selected, replace_selected]
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
        "credential_problem_at",
        "credential_problem_staff_emailed_at",
        "service_credit_for",
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

    user_email = user_email_column("user")

    @admin.display(description="price")
    def price(self, obj: Subscription) -> str | None:
        return f"{usd(obj.price_micros)} / {obj.billing_period_days} days"

    @admin.display(description="credential")
    def credential_link(self, obj: Subscription) -> str:
        url = reverse("admin:inventory_credential_change", args=[obj.credential_id])
        return format_html(
            '<a href="{}">#{} ({})</a>', url, obj.credential_id, obj.credential.get_state_display()
        )

    # -- operator termination (SPEC L6) --

    def has_terminate_permission(self, request, obj=None) -> bool:
        return request.user.has_perm(TERMINATE_PERMISSION)

    def has_replace_permission(self, request, obj=None) -> bool:
        return request.user.has_perm(REPLACE_PERMISSION)

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path(
                "terminate/",
                wrap(self.terminate_view),
                name="subscriptions_subscription_terminate",
            ),
            path(
                "<int:subscription_id>/terminate/",
                wrap(self.terminate_view),
                name="subscriptions_subscription_terminate_one",
            ),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        subscription = (
            Subscription.objects.filter(pk=object_id).only("id", "status", "credential_id").first()
            if str(object_id).isdigit()
            else None
        )
        extra = {}
        if subscription is not None:
            extra["audit_links"] = audit_links(
                request,
                subscription,
                (
                    f"Credential #{subscription.credential_id} events",
                    audit_url(
                        subject_type="inventory.credential", subject_id=subscription.credential_id
                    ),
                ),
            )
            if subscription.is_live and self.has_terminate_permission(request):
                extra["terminate_url"] = reverse(
                    "admin:subscriptions_subscription_terminate_one", args=[subscription.pk]
                )
        return super().change_view(
            request, object_id, form_url, extra_context={**(extra_context or {}), **extra}
        )

    def _selected_ids(self, request, subscription_id: int | None) -> list[int]:
        if subscription_id is not None:
            return [subscription_id]
        raw = request.POST.get("ids") if request.method == "POST" else request.GET.get("ids")
        ids = []
        for part in (raw or "").split(","):
            part = part.strip()
            if part.isdigit() and int(part) not in ids:
                ids.append(int(part))
        return ids[:MAX_TERMINATE_AT_ONCE]

    def terminate_view(self, request, subscription_id: int | None = None):
        """Confirmation (what will happen, per subscription), then the service, then the result."""
        if not self.has_terminate_permission(request):
            raise PermissionDenied
        ids = self._selected_ids(request, subscription_id)
        subscriptions = list(
            Subscription.objects.filter(pk__in=ids)
            .select_related("user", "credential")
            .defer("credential__encrypted_key", "credential__fingerprint")
            .order_by("id")
        )
        if not subscriptions:
            self.message_user(request, "No subscription was selected.", messages.ERROR)
            return HttpResponseRedirect(reverse("admin:subscriptions_subscription_changelist"))
        installed = set(
            ByokKey.objects.filter(subscription_id__in=[s.pk for s in subscriptions]).values_list(
                "subscription_id", flat=True
            )
        )
        if request.method == "POST" and request.POST.get("confirm") == "yes":
            actor = f"staff:{request.user.pk}"
            for subscription in subscriptions:
                self._terminate_one(request, subscription, actor, subscription.pk in installed)
            if len(subscriptions) == 1:
                return HttpResponseRedirect(
                    reverse("admin:subscriptions_subscription_change", args=[subscriptions[0].pk])
                )
            return HttpResponseRedirect(reverse("admin:subscriptions_subscription_changelist"))
        rows = [
            {
                "subscription": subscription,
                "live": subscription.is_live,
                "installed": subscription.pk in installed,
                "price": usd(subscription.price_micros),
            }
            for subscription in subscriptions
        ]
        live = [row for row in rows if row["live"]]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": (
                f"Terminate subscription #{subscriptions[0].pk}"
                if len(subscriptions) == 1
                else f"Terminate {len(subscriptions)} subscriptions"
            ),
            "rows": rows,
            "live_count": len(live),
            "ids": ",".join(str(s.pk) for s in subscriptions),
            "cancel_url": (
                reverse("admin:subscriptions_subscription_change", args=[subscriptions[0].pk])
                if len(subscriptions) == 1
                else reverse("admin:subscriptions_subscription_changelist")
            ),
        }
        return TemplateResponse(request, "admin/subscriptions/subscription/terminate.html", context)

    def _terminate_one(self, request, subscription: Subscription, actor: str, installed: bool):
        try:
            ended = terminate_subscription(
                subscription_id=subscription.pk, actor=actor, now=timezone.now()
            )
        except DomainError as exc:
            self.message_user(
                request,
                f"Subscription #{subscription.pk} was not terminated: {exc.message}",
                messages.ERROR,
            )
            return
        entry = (
            "its installed BYOK entry was removed"
            if installed
            else "no installed BYOK entry was linked (the customer had replaced or removed it), "
            "so BYOK is unchanged"
        )
        self.message_user(
            request,
            f"Subscription #{ended.pk} terminated (administrative termination): access ended "
            f"now, {entry}, and credential #{ended.credential_id} is queued for revocation.",
            messages.SUCCESS,
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

    user_email = user_email_column("subscription__user")
    amount = usd_column("amount_micros", "amount")

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
        # The sweep's keys in its own order (as the admin home shows them), then any other.
        keys = [key for key in SweepRun.COUNT_KEYS if key in counts]
        keys += sorted(key for key in counts if key not in SweepRun.COUNT_KEYS)
        return ", ".join(f"{key} {counts[key]}" for key in keys) or "-"

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
