"""Users (e-mail based) and personal API tokens in the admin (SPEC S2, D1, O1).

Accounts are created by sign-up or `create_user`, and deleted only through `delete_account`
(D1): here, a confirmation page that lists the consequences, then the service. The admin never
adds users nor deletes the row itself. Changes to a user's access (active, staff, superuser,
groups, permissions, password) are written to the audit trail. The password hash and token
hashes never appear.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from accounts.login import AdminLoginForm
from accounts.models import ApiToken, User
from accounts.services import DeletionChannel, delete_account, deletion_refusal
from adminops.adminkit import ReadOnlyAdmin, SecretFieldsMixin, audit_links, audit_url
from adminops.audit import record_event

DELETE_ACCOUNT_PERMISSION = "accounts.delete_account"

# The admin's log-in form counts each attempt against the log-in rate limit, sharing each
# account's budget with /accounts/login/ (accounts/login.py).
admin.site.login_form = AdminLoginForm
AUDITED_FLAGS = ("is_active", "is_staff", "is_superuser")


def _access(user: User) -> dict[str, object]:
    """What a change in the admin can alter about someone's access (no personal data)."""
    return {
        **{flag: getattr(user, flag) for flag in AUDITED_FLAGS},
        "groups": sorted(user.groups.values_list("name", flat=True)),
        "user_permissions": sorted(
            f"{app}.{codename}"
            for app, codename in user.user_permissions.values_list(
                "content_type__app_label", "codename"
            )
        ),
    }


@admin.action(description="Delete the selected account…", permissions=["delete_account"])
def delete_selected_account(modeladmin, request, queryset):
    ids = list(queryset.values_list("pk", flat=True)[:2])
    if len(ids) != 1:
        modeladmin.message_user(
            request, "Select exactly one account to delete: one at a time.", messages.ERROR
        )
        return None
    return HttpResponseRedirect(reverse("admin:accounts_user_delete_account", args=[ids[0]]))


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
    actions = [delete_selected_account]

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

    # -- audit trail of access changes (SPEC O1) --

    def save_model(self, request, obj, form, change):
        if change:
            request._audit_old_access = _access(User.objects.get(pk=obj.pk))
        super().save_model(request, obj, form, change)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        old = getattr(request, "_audit_old_access", None)
        if old is None:
            return
        user = form.instance
        new = _access(user)
        changed = {key for key in new if new[key] != old[key]}
        if "full_name" in form.changed_data:
            changed.add("full_name")
        if not changed:
            return
        record_event(  # in the admin's own transaction (changeform_view is atomic)
            actor=f"staff:{request.user.pk}",
            subject=user,
            event_type="user.changed_by_staff",
            now=timezone.now(),
            old={key: old[key] for key in changed if key in old},
            new={
                **{key: new[key] for key in changed if key in new},
                # The name itself is personal data: it must not outlive an account deletion.
                **({"full_name": "changed"} if "full_name" in changed else {}),
            },
        )

    def user_change_password(self, request, id, form_url=""):
        request._audit_password_change = True
        with transaction.atomic():
            return super().user_change_password(request, id, form_url)

    def log_change(self, request, obj, message):
        entry = super().log_change(request, obj, message)
        if getattr(request, "_audit_password_change", False):
            record_event(
                actor=f"staff:{request.user.pk}",
                subject=obj,
                event_type=(
                    "user.password_set_by_staff"
                    if obj.has_usable_password()
                    else "user.password_disabled_by_staff"
                ),
                now=timezone.now(),
            )
        return entry

    # -- links and account deletion (SPEC D1) --

    def has_delete_account_permission(self, request, obj=None) -> bool:
        return request.user.has_perm(DELETE_ACCOUNT_PERMISSION)

    def get_urls(self):
        return [
            path(
                "<int:user_id>/delete-account/",
                self.admin_site.admin_view(self.delete_account_view),
                name="accounts_user_delete_account",
            ),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        user = (
            User.objects.filter(pk=object_id).only("id", "is_staff", "deleted_at").first()
            if str(object_id).isdigit()
            else None
        )
        extra = {}
        if user is not None:
            extra["audit_links"] = audit_links(
                request,
                user,
                ("Actions as customer", audit_url(actor=f"user:{user.pk}")),
                ("Actions as staff", audit_url(actor=f"staff:{user.pk}")),
            )
            if user.deleted_at is None and self.has_delete_account_permission(request):
                extra["delete_account_url"] = reverse(
                    "admin:accounts_user_delete_account", args=[user.pk]
                )
        return super().change_view(
            request, object_id, form_url, extra_context={**(extra_context or {}), **extra}
        )

    def delete_account_view(self, request, user_id: int):
        """D1 from the admin: what will happen (counted for this account), then the service."""
        from billing.selectors import credit_account_for
        from byok.models import ByokKey
        from subscriptions.models import LIVE_STATUSES, AvailabilityIntent, Subscription

        if not self.has_delete_account_permission(request):
            raise PermissionDenied
        user = get_object_or_404(User, pk=user_id)
        change_url = reverse("admin:accounts_user_change", args=[user.pk])
        refusal = deletion_refusal(target=user, channel=DeletionChannel.ADMIN, by=request.user)
        live = list(Subscription.objects.filter(user=user, status__in=LIVE_STATUSES).order_by("id"))
        keys = ByokKey.objects.filter(user=user)
        consequences = {
            "live": live,
            "byok_keys": keys.count(),
            "own_keys": keys.filter(subscription__isnull=True).count(),
            "intents": AvailabilityIntent.objects.filter(user=user).count(),
            "tokens": ApiToken.objects.filter(user=user, revoked_at__isnull=True).count(),
            # SPEC M10: the balance that deletion forfeits.
            "forfeit_micros": credit_account_for(user).balance_micros,
        }
        error = ""
        if request.method == "POST" and refusal is None:
            typed = (request.POST.get("confirm_email") or "").strip().lower()
            if request.POST.get("confirm") == "yes" and typed == user.email.lower():
                delete_account(user=user, actor=f"staff:{request.user.pk}", now=timezone.now())
                plans = len(live)
                self.message_user(
                    request,
                    f"Account #{user.pk} deleted: {plans} plan{'s' if plans != 1 else ''} ended, "
                    f"{consequences['byok_keys']} BYOK key(s) and {consequences['intents']} "
                    f"notify-me intent(s) deleted, {plans} credential(s) queued for revocation, "
                    "e-mail and name erased, API tokens and sessions revoked.",
                    messages.SUCCESS,
                )
                return HttpResponseRedirect(change_url)
            error = "Type the account's e-mail address exactly to confirm the deletion."
        elif request.method == "POST":
            self.message_user(
                request, f"Account #{user.pk} was not deleted: {refusal}", messages.ERROR
            )
            return HttpResponseRedirect(change_url)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Delete account #{user.pk}",
            "account": user,
            "refusal": refusal,
            "error": error,
            "change_url": change_url,
            **consequences,
        }
        return TemplateResponse(request, "admin/accounts/user/delete_account.html", context)


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
