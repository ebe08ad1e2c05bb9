"""BYOK entries in the admin, read-only: provider, hint and link only, never the key (SPEC B, S1).

Customers manage their own keys; operators only look (support questions, the installed-entry
link of a Coding Plan).
"""

from __future__ import annotations

from django.contrib import admin

from adminops.adminkit import ReadOnlyAdmin, user_email_column
from byok.models import ByokKey


@admin.register(ByokKey)
class ByokKeyAdmin(ReadOnlyAdmin):
    secret_fields = ("encrypted_key",)
    list_display = (
        "id",
        "user_email",
        "provider_id",
        "key_hint",
        "enabled",
        "managed_by",
        "subscription_id",
        "created_at",
        "updated_at",
    )
    list_select_related = ("user",)
    list_filter = ("provider_id", "enabled", "managed_by")
    search_fields = ("user__email",)
    ordering = ("-id",)
    fields = (
        "id",
        "user",
        "provider_id",
        "key_hint",
        "enabled",
        "managed_by",
        "subscription",
        "created_at",
        "updated_at",
    )
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).defer("encrypted_key")

    user_email = user_email_column("user")
