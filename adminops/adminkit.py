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
