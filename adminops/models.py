"""Audit events (SPEC O1): one row per state change, written in the service's transaction."""

from __future__ import annotations

from django.db import models


class AuditEvent(models.Model):
    actor = models.CharField(max_length=100, help_text="user:<id>, staff:<id> or system:<name>")
    subject_type = models.CharField(max_length=40)
    subject_id = models.CharField(max_length=64)
    event_type = models.CharField(max_length=60)
    old_values = models.JSONField(default=dict, blank=True)
    new_values = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["subject_type", "subject_id"]),
            models.Index(fields=["event_type"]),
            models.Index(fields=["actor"]),
            models.Index(fields=["created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.subject_type}:{self.subject_id} by {self.actor}"
