"""The one way services write audit events. Called inside the service's own transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import models

from adminops.models import AuditEvent
from codingplans import sql

SYSTEM_SWEEP = "system:sweep"


def actor_for(user: Any | None, *, system: str | None = None) -> str:
    """`staff:<id>` for staff, `user:<id>` for customers, `system:<name>` for jobs."""
    if user is None:
        return f"system:{system or 'unknown'}"
    return f"{'staff' if getattr(user, 'is_staff', False) else 'user'}:{user.pk}"


def record_event(
    *,
    actor: str,
    subject: models.Model | tuple[str, object],
    event_type: str,
    now: datetime,
    old: dict[str, Any] | None = None,
    new: dict[str, Any] | None = None,
) -> AuditEvent:
    if isinstance(subject, models.Model):
        subject_type, subject_id = subject._meta.label_lower, subject.pk
    else:
        subject_type, subject_id = subject
    # A lean INSERT (codingplans.sql): every state change writes one, the sweep thousands.
    values = {
        "actor": actor,
        "subject_type": subject_type,
        "subject_id": str(subject_id),
        "event_type": event_type,
        "old_values": old or {},
        "new_values": new or {},
        "created_at": now,
    }
    event = AuditEvent(id=sql.insert(AuditEvent, **values), **values)
    event._state.adding = False
    return event
