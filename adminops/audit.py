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


def event_values(
    *,
    actor: str,
    subject: models.Model | tuple[str, object],
    event_type: str,
    now: datetime,
    old: dict[str, Any] | None = None,
    new: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The column values of one audit event (the JSON still as Python values)."""
    if isinstance(subject, models.Model):
        subject_type, subject_id = subject._meta.label_lower, subject.pk
    else:
        subject_type, subject_id = subject
    return {
        "actor": actor,
        "subject_type": subject_type,
        "subject_id": str(subject_id),
        "event_type": event_type,
        "old_values": old or {},
        "new_values": new or {},
        "created_at": now,
    }


_COLUMNS = tuple(event_values(actor="", subject=("", ""), event_type="", now=None))


def events_insert(
    name: str, events: list[dict[str, Any]], *, source: str | None = None
) -> tuple[str, dict[str, Any]]:
    """A `name AS (INSERT …)` common table expression writing `events` (from `event_values`)
    and its named parameters, for a service that writes its rows in one statement (the
    purchase, the renewal). Same rows as `record_event`, without a round trip each. With
    `source` (another CTE of the statement) the events are written once per row of it: only
    if the change they describe happened."""
    params: dict[str, Any] = {}
    rows = []
    for i, event in enumerate(events):
        placeholders = []
        for column in _COLUMNS:
            key = f"{name}{i}_{column}"
            value = event[column]
            # Converted by the field, as the ORM and `sql.insert` convert it (JSON included).
            params[key] = sql.prepared_value(AuditEvent, column, value)
            placeholders.append(f"%({key})s")
        rows.append(f"({', '.join(placeholders)})")
    if source is None:
        values = f"VALUES {', '.join(rows)}"
    else:
        values = " UNION ALL ".join(f"SELECT {row[1:-1]} FROM {source}" for row in rows)  # noqa: S608 - names from our code
    statement = f"{name} AS (INSERT INTO {sql.table(AuditEvent)} ({', '.join(_COLUMNS)}) {values})"
    return statement, params


def record_event(
    *,
    actor: str,
    subject: models.Model | tuple[str, object],
    event_type: str,
    now: datetime,
    old: dict[str, Any] | None = None,
    new: dict[str, Any] | None = None,
) -> AuditEvent:
    # A lean INSERT (codingplans.sql): every state change writes one, the sweep thousands.
    values = event_values(
        actor=actor, subject=subject, event_type=event_type, now=now, old=old, new=new
    )
    event = AuditEvent(id=sql.insert(AuditEvent, **values), **values)
    event._state.adding = False
    return event
