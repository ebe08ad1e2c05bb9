"""Building blocks for the operators' admin (SPEC I6, S1, S2).

- `ReadOnlyAdmin`: lists and detail pages only; no add, edit or delete through the admin.
- `secret_fields`: fields that never appear on a page and cannot be probed with URL lookups
  (Django allows `?field__startswith=...` on any local field by default, which would turn the
  changelist into an oracle for a fingerprint or an encrypted value).
"""

from __future__ import annotations

from django.contrib import admin
from django.db.models.constants import LOOKUP_SEP

from codingplans.money import display_usd
from codingplans.redaction import redact


class SecretFieldsMixin:
    """Exclude `secret_fields` from forms and deny changelist lookups on them."""

    secret_fields: tuple[str, ...] = ()

    def get_exclude(self, request, obj=None):
        return tuple(super().get_exclude(request, obj) or ()) + tuple(self.secret_fields)

    def get_fields(self, request, obj=None):
        return [f for f in super().get_fields(request, obj) if f not in self.secret_fields]

    def lookup_allowed(self, lookup, value, request=None):
        if lookup.split(LOOKUP_SEP)[0] in self.secret_fields:
            return False
        return super().lookup_allowed(lookup, value, request)


class ReadOnlyAdmin(SecretFieldsMixin, admin.ModelAdmin):
    """Staff with the model's view permission can read; nobody adds, edits or deletes here."""

    actions = None

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


def usd(micros: int | None) -> str | None:
    return None if micros is None else display_usd(micros)


def clean_text(value: object) -> str:
    """Text shown to operators that might, by accident, carry something key-shaped."""
    return redact(str(value))


AUDIT_PERMISSION = "adminops.view_auditevent"


def audit_url(
    *, subject_type: str | None = None, subject_id: object = None, actor: str = ""
) -> str:
    """The audit trail filtered to one subject (`app_label.model`, id) or one actor (O1)."""
    from django.urls import reverse
    from django.utils.http import urlencode

    query: dict[str, str] = {}
    if subject_type is not None:
        query.update(subject_type=subject_type, subject_id=str(subject_id))
    if actor:
        query["actor"] = actor
    return f"{reverse('admin:adminops_auditevent_changelist')}?{urlencode(query)}"


def audit_links(request, obj, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    """(label, url) pairs for a change page: the object's own events, then `extra` pairs,
    or nothing for staff who may not read the audit trail."""
    if obj is None or not request.user.has_perm(AUDIT_PERMISSION):
        return []
    own = ("Audit trail", audit_url(subject_type=obj._meta.label_lower, subject_id=obj.pk))
    return [own, *extra]


def user_email_column(path: str = "user"):
    """A changelist column with the e-mail of the user at `path` (`account__user`), sortable.
    One definition for every admin that lists a customer's rows."""

    @admin.display(description="user", ordering=f"{path}{LOOKUP_SEP}email")
    def user_email(self, obj) -> str:
        for part in path.split(LOOKUP_SEP):
            obj = getattr(obj, part)
        return obj.email

    return user_email


def usd_column(field: str, description: str, *, sortable: bool = True):
    """A column showing the microdollar `field` in USD (SPEC 0: never microdollars on screen)."""

    @admin.display(description=description, ordering=field if sortable else None)
    def column(self, obj) -> str | None:
        return usd(getattr(obj, field))

    return column
