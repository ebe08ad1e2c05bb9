"""Audit events in the admin (SPEC O1): read-only, filtered by subject, actor, type and date;
and the group (staff role) admin, with its changes audited."""

from __future__ import annotations

import json

from django.contrib import admin
from django.contrib.auth.admin import GroupAdmin
from django.contrib.auth.models import Group
from django.utils import timezone
from django.utils.html import format_html
from django.utils.http import urlencode

from adminops.adminkit import ReadOnlyAdmin, clean_text
from adminops.audit import record_event
from adminops.models import AuditEvent

admin.site.site_header = "Coding Plans operations"
admin.site.site_title = "Coding Plans admin"
admin.site.index_title = "Operations"


class ActorKindFilter(admin.SimpleListFilter):
    """Staff, customers or a system job. (One exact actor: search for it, or follow a link.)"""

    title = "actor"
    parameter_name = "actor_kind"

    def lookups(self, request, model_admin):
        return [("staff", "Staff"), ("user", "Customers"), ("system", "System")]

    def queryset(self, request, queryset):
        value = self.value()
        if value in {"staff", "user", "system"}:
            return queryset.filter(actor__startswith=f"{value}:")
        return queryset


def _json(values: object) -> str:
    return clean_text(json.dumps(values, sort_keys=True, default=str)) if values else ""


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "event_type", "actor_link", "subject_link", "changes")
    list_filter = ("event_type", ActorKindFilter, "subject_type", "created_at")
    date_hierarchy = "created_at"
    search_fields = ("=subject_id", "actor")
    search_help_text = "Subject id (exact) or actor (e.g. staff:3, system:sweep)."
    ordering = ("-created_at", "-id")
    list_per_page = 100
    show_full_result_count = False
    fields = (
        "id",
        "created_at",
        "event_type",
        "actor",
        "subject_type",
        "subject_id",
        "old",
        "new",
    )
    readonly_fields = fields

    @admin.display(description="actor", ordering="actor")
    def actor_link(self, obj: AuditEvent) -> str:
        return format_html('<a href="?{}">{}</a>', urlencode({"actor": obj.actor}), obj.actor)

    @admin.display(description="subject")
    def subject_link(self, obj: AuditEvent) -> str:
        query = urlencode({"subject_type": obj.subject_type, "subject_id": obj.subject_id})
        return format_html('<a href="?{}">{} {}</a>', query, obj.subject_type, obj.subject_id)

    @admin.display(description="old → new")
    def changes(self, obj: AuditEvent) -> str:
        old, new = _json(obj.old_values), _json(obj.new_values)
        return f"{old} → {new}" if old else new

    @admin.display(description="old values")
    def old(self, obj: AuditEvent) -> str:
        return _json(obj.old_values)

    @admin.display(description="new values")
    def new(self, obj: AuditEvent) -> str:
        return _json(obj.new_values)


class AuditedGroupAdmin(GroupAdmin):
    """Django's group admin, with each change of a group's name or permissions in the audit
    trail (a role's reach is as sensitive as a person's, SPEC O1, S2)."""

    @staticmethod
    def _state(group: Group) -> dict[str, object]:
        return {
            "name": group.name,
            "permissions": sorted(
                f"{app}.{codename}"
                for app, codename in group.permissions.values_list(
                    "content_type__app_label", "codename"
                )
            ),
        }

    def save_model(self, request, obj, form, change):
        request._audit_old_group = (
            self._state(Group.objects.get(pk=obj.pk)) if change else {"name": "", "permissions": []}
        )
        super().save_model(request, obj, form, change)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        old, new = request._audit_old_group, self._state(form.instance)
        changed = [key for key in new if new[key] != old[key]]
        if changed:
            record_event(  # inside the admin's transaction (changeform_view is atomic)
                actor=f"staff:{request.user.pk}",
                subject=form.instance,
                event_type="group.changed_by_staff" if change else "group.created_by_staff",
                now=timezone.now(),
                old={key: old[key] for key in changed} if change else None,
                new={key: new[key] for key in changed},
            )

    def delete_model(self, request, obj):
        old = self._state(obj)
        pk = obj.pk
        super().delete_model(request, obj)
        record_event(
            actor=f"staff:{request.user.pk}",
            subject=("auth.group", pk),
            event_type="group.deleted_by_staff",
            now=timezone.now(),
            old=old,
        )


# Swapped in place rather than unregistered and registered again, so the registry keeps its
# order (the admin's app-list URL pattern is built from it).
admin.site._registry[Group] = AuditedGroupAdmin(Group, admin.site)
