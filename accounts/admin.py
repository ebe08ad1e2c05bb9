"""Users (e-mail based) and personal API tokens in the admin (SPEC S2).

Accounts are created by sign-up or `create_user`, and deleted only by `delete_account` (D1), so
the admin neither adds nor deletes users. The password hash and token hashes never appear.
"""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.urls import reverse
from django.utils.html import format_html

from accounts.models import ApiToken, User
from adminops.adminkit import ReadOnlyAdmin, SecretFieldsMixin


@admin.register(User)
class UserAdmin(SecretFieldsMixin, DjangoUserAdmin):
    secret_fields = ("password",)
    list_display = ("email", "full_name", "is_staff", "is_active", "date_joined")
    list_filter = ("is_staff", "is_superuser", "is_active", "groups")
    search_fields = ("email", "full_name")
    ordering = ("email",)
    filter_horizontal = ("groups", "user_permissions")
    fieldsets = (
        (None, {"fields": ("email", "full_name", "password_status")}),
        (
            "Permissions",
            {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")},
        ),
        ("Dates", {"fields": ("date_joined", "last_login", "deleted_at")}),
    )
    add_fieldsets = fieldsets
    readonly_fields = ("email", "password_status", "date_joined", "last_login", "deleted_at")
    actions = None

    def get_readonly_fields(self, request, obj=None):
        fields = tuple(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            # Only superusers hand out superuser status or permissions.
            fields += ("is_superuser", "groups", "user_permissions")
        return fields

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="password")
    def password_status(self, obj: User) -> str:
        if obj is None or obj.pk is None:
            return ""
        state = "Set" if obj.has_usable_password() else "Not set (cannot log in with a password)"
        url = reverse("admin:auth_user_password_change", args=[obj.pk])
        return format_html('{} &middot; <a href="{}">Set a new password</a>', state, url)


class TokenStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("active", "Active"), ("revoked", "Revoked")]

    def queryset(self, request, queryset):
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyAdmin):
    secret_fields = ("token_hash",)
    list_display = (
        "id",
        "user_email",
        "name",
        "token_prefix",
        "created_at",
        "last_used_at",
        "revoked_at",
    )
    list_select_related = ("user",)
    list_filter = (TokenStateFilter,)
    search_fields = ("user__email", "prefix")
    ordering = ("-created_at", "-id")
    fields = ("id", "user", "name", "token_prefix", "created_at", "last_used_at", "revoked_at")
    readonly_fields = fields

    @admin.display(description="user", ordering="user__email")
    def user_email(self, obj: ApiToken) -> str:
        return obj.user.email

    @admin.display(description="token")
    def token_prefix(self, obj: ApiToken) -> str:
        return f"{obj.prefix}…"
