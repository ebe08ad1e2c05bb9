"""Operators' admin for inventory (SPEC I1-I7, R1-R3, S1, S2): the ModelAdmins and the wiring of
their own pages (upload, upload status, revocation queue, record revocation), which live in
`inventory.admin_views` with their forms in `inventory.admin_forms`.

Credentials are read-only here; the only writes are the upload and the revocation outcome, both
through services. No page shows an API key, its encrypted value or its fingerprint, and the
upstream plan id appears only for credentials waiting to be deprovisioned (I6, R1).
"""

from __future__ import annotations

from django.contrib import admin
from django.http import Http404, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html

from adminops.adminkit import ReadOnlyAdmin, audit_links, audit_url
from inventory import admin_views, selectors, services
from inventory.admin_forms import plan_choices
from inventory.admin_views import (
    CREDENTIAL_SECRETS,
    REVOCABLE,
    REVOCATION_PERMISSION,
    STOCK_HEALTH_PERMISSION,
    UPLOAD_PERMISSION,
    admin_page,
    plan_label,
)
from inventory.models import Credential, InventoryUpload

# --- Filters ----------------------------------------------------------------------------------


class PlanFilter(admin.SimpleListFilter):
    title = "plan"
    parameter_name = "plan_id"

    def lookups(self, request, model_admin):
        return plan_choices()

    def queryset(self, request, queryset):
        value = self.value()
        return queryset.filter(plan_id=value) if value else queryset


# --- Credentials ------------------------------------------------------------------------------


@admin.register(Credential)
class CredentialAdmin(ReadOnlyAdmin):
    secret_fields = CREDENTIAL_SECRETS
    list_display = (
        "id",
        "plan_id",
        "state",
        "upstream_plan",
        "created_at",
        "assigned_at",
        "revocation_requested_at",
        "revoked_at",
        "revocation_attempts",
        "note",
        "quarantined_at",
        "health_note",
    )
    list_filter = (PlanFilter, "state")
    list_select_related = ()
    list_per_page = 100
    ordering = ("-id",)
    search_fields = ("id",)
    search_help_text = "Credential id (e.g. 42 or #42)."
    fields = (
        "id",
        "plan_id",
        "state",
        "upstream_plan",
        "upload",
        "assigned_to",
        "holder_ref",
        "created_at",
        "assigned_at",
        "revocation_requested_at",
        "revoked_at",
        "last_attempt_at",
        "revocation_attempts",
        "note",
        "health_checked_at",
        "quarantined_at",
        "health_note",
    )
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).defer(*CREDENTIAL_SECRETS)

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip().lstrip("#")
        if not term:
            return queryset, False
        if not term.isdigit():
            return queryset.none(), False
        return queryset.filter(pk=int(term)), False

    def has_view_permission(self, request, obj=None):
        return (
            super().has_view_permission(request, obj)
            or request.user.has_perm(UPLOAD_PERMISSION)
            or request.user.has_perm(REVOCATION_PERMISSION)
        )

    @admin.display(description="upstream plan id")
    def upstream_plan(self, obj: Credential) -> str | None:
        # Only for items support must deprovision at the provider (I6, R1).
        return obj.upstream_plan_id if obj.state in REVOCABLE else None

    @admin.display(description="note")
    def note(self, obj: Credential) -> str:
        return services.sanitize_note(obj.failure_note)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        credential = (
            Credential.objects.filter(pk=object_id).only("id", "state").first()
            if str(object_id).isdigit()
            else None
        )
        extra = {}
        if credential is not None:
            # Through the reverse relation the subscription declares, so inventory names no
            # model above it (issue 14).
            subscription_id = (
                Credential.objects.filter(pk=credential.pk)
                .values_list("subscription__id", flat=True)
                .first()
            )
            more = (
                [
                    (
                        f"Subscription #{subscription_id} events",
                        audit_url(
                            subject_type="subscriptions.subscription", subject_id=subscription_id
                        ),
                    )
                ]
                if subscription_id is not None
                else []
            )
            extra["audit_links"] = audit_links(request, credential, *more)
            if credential.state in Credential.RETIRABLE_STATES and request.user.has_perm(
                STOCK_HEALTH_PERMISSION
            ):
                extra["stock_health_url"] = reverse(
                    "admin:inventory_credential_stock_health", args=[credential.pk]
                )
            if credential.state in REVOCABLE and request.user.has_perm(REVOCATION_PERMISSION):
                extra["record_revocation_url"] = reverse(
                    "admin:inventory_credential_record_revocation", args=[credential.pk]
                )
        return super().change_view(
            request, object_id, form_url, extra_context={**(extra_context or {}), **extra}
        )

    # -- extra pages --

    def get_urls(self):
        return [
            path(
                "upload/",
                admin_page(self, admin_views.upload_view),
                name="inventory_credential_upload",
            ),
            path(
                "revocation-queue/",
                admin_page(self, admin_views.revocation_queue_view),
                name="inventory_credential_revocation_queue",
            ),
            path(
                "<int:credential_id>/stock-health/",
                admin_page(self, admin_views.stock_health_view),
                name="inventory_credential_stock_health",
            ),
            path(
                "<int:credential_id>/record-revocation/",
                admin_page(self, admin_views.record_revocation_view),
                name="inventory_credential_record_revocation",
            ),
            *super().get_urls(),
        ]

    def changelist_view(self, request, extra_context=None):
        counts = selectors.counts_by_plan()
        low = {plan_id: threshold for plan_id, _, threshold in selectors.low_stock_plans()}
        rows = [
            {
                "plan_id": plan_id,
                "label": plan_label(plan_id),
                "counts": [by_state[state] for state in selectors.STATES],
                "total": sum(by_state.values()),
                "low": plan_id in low,
                "threshold": low.get(plan_id),
            }
            for plan_id, by_state in counts.items()
        ]
        extra_context = {
            **(extra_context or {}),
            "inventory_states": [Credential.State(state).label for state in selectors.STATES],
            "inventory_rows": rows,
            "low_stock": [row for row in rows if row["low"]],
            "queue_size": sum(
                by_state[state] for by_state in counts.values() for state in REVOCABLE
            ),
            "can_upload": request.user.has_perm(UPLOAD_PERMISSION),
            "can_revoke": request.user.has_perm(REVOCATION_PERMISSION),
        }
        return super().changelist_view(request, extra_context=extra_context)


# --- Uploads ----------------------------------------------------------------------------------


@admin.register(InventoryUpload)
class InventoryUploadAdmin(ReadOnlyAdmin):
    secret_fields = ("encrypted_payload",)
    list_display = (
        "id",
        "plan_id",
        "status",
        "actor",
        "line_count",
        "validated_count",
        "stored_count",
        "created_at",
        "finished_at",
        "report",
    )
    list_filter = (PlanFilter, "status")
    ordering = ("-created_at", "-id")
    fields = (
        "id",
        "plan_id",
        "status",
        "actor",
        "line_count",
        "validated_count",
        "stored_count",
        "message",
        "created_at",
        "finished_at",
    )
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).defer("encrypted_payload")

    def has_view_permission(self, request, obj=None):
        return super().has_view_permission(request, obj) or request.user.has_perm(UPLOAD_PERMISSION)

    @admin.display(description="report")
    def report(self, obj: InventoryUpload) -> str:
        url = reverse("admin:inventory_inventoryupload_status", args=[obj.pk])
        return format_html('<a href="{}">Progress and report</a>', url)

    def get_urls(self):
        return [
            path(
                "<int:upload_id>/status/",
                admin_page(self, admin_views.status_view),
                name="inventory_inventoryupload_status",
            ),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        if not str(object_id).isdigit():
            raise Http404
        return HttpResponseRedirect(
            reverse("admin:inventory_inventoryupload_status", args=[int(object_id)])
        )
