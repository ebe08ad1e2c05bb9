"""Plan credentials bought in advance (SPEC I1–I7, R1–R3).

A credential's API key is stored encrypted and erased when it enters `revocation_pending`; the
keyed fingerprint stays forever, so the same key can never be stocked twice.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Credential(models.Model):
    class State(models.TextChoices):
        AVAILABLE = "available", "Available"
        ASSIGNED = "assigned", "Assigned"
        REVOCATION_PENDING = "revocation_pending", "Revocation pending"
        REVOKED = "revoked", "Revoked"
        REVOCATION_FAILED = "revocation_failed", "Revocation failed"
        # Rejected by the provider (401/403) at the daily re-validation (SPEC H1): never sold; staff
        # retire it or, after a successful re-test, return it to `available` (H2).
        QUARANTINED = "quarantined", "Quarantined"

    # The state machine (SPEC I4, H1, H2): every state a credential may move to from each state.
    # `assigned` never returns to `available` (I4); `quarantined` does only after a re-test.
    TRANSITIONS = {
        State.AVAILABLE: (State.ASSIGNED, State.QUARANTINED, State.REVOCATION_PENDING),
        State.QUARANTINED: (State.AVAILABLE, State.REVOCATION_PENDING),
        State.ASSIGNED: (State.REVOCATION_PENDING,),
        State.REVOCATION_PENDING: (State.REVOKED, State.REVOCATION_FAILED),
        State.REVOCATION_FAILED: (State.REVOKED, State.REVOCATION_FAILED),
        State.REVOKED: (),
    }
    # What staff may retire (H2): stock that was never sold.
    RETIRABLE_STATES = (State.AVAILABLE, State.QUARANTINED)

    # Waiting to be deprovisioned at the provider: the revocation queue, the states that take an
    # outcome (R1, R2). The queue's partial index below names the same two states.
    REVOCABLE_STATES = (State.REVOCATION_PENDING, State.REVOCATION_FAILED)

    plan_id = models.CharField(max_length=64)
    state = models.CharField(max_length=24, choices=State.choices, default=State.AVAILABLE)
    encrypted_key = models.TextField(blank=True, help_text="Erased at revocation_pending (I5).")
    fingerprint = models.CharField(max_length=64, unique=True)
    upstream_plan_id = models.CharField(max_length=200)
    upload = models.ForeignKey(
        "inventory.InventoryUpload", null=True, blank=True, on_delete=models.SET_NULL
    )
    # The person it was issued to; cleared on account deletion (D1), leaving only `holder_ref`.
    assigned_to = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    holder_ref = models.CharField(max_length=64, blank=True, help_text="Anonymous reference.")
    created_at = models.DateTimeField()
    assigned_at = models.DateTimeField(null=True, blank=True)
    revocation_requested_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    revocation_attempts = models.PositiveIntegerField(default=0)
    failure_note = models.CharField(max_length=500, blank=True)
    # Stock health (SPEC H1): when the daily re-validation last checked this credential (a run
    # cut off half-way resumes with those not checked since it started), when it was
    # quarantined and why (our own wording, never the provider's text).
    health_checked_at = models.DateTimeField(null=True, blank=True)
    quarantined_at = models.DateTimeField(null=True, blank=True)
    health_note = models.CharField(max_length=200, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["plan_id", "state"]),
            models.Index(
                fields=["plan_id", "id"],
                name="inv_available_idx",
                condition=models.Q(state="available"),
            ),
            models.Index(
                fields=["revocation_requested_at", "id"],
                name="inv_revocation_queue_idx",
                condition=models.Q(state__in=["revocation_pending", "revocation_failed"]),
            ),
        ]
        permissions = [
            ("upload_credentials", "Can upload inventory credentials"),
            ("record_revocation", "Can record revocation outcomes"),
            ("manage_stock_health", "Can retire and re-test credentials"),
        ]

    def __str__(self) -> str:
        return f"Credential #{self.pk} ({self.plan_id}, {self.state})"

    def __repr__(self) -> str:
        return f"<Credential id={self.pk} plan={self.plan_id} state={self.state}>"


class InventoryUpload(models.Model):
    """One upload attempt and its report. The pasted keys are held encrypted only while the
    background validation runs, then erased."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        VALIDATING = "validating", "Validating"
        STORED = "stored", "Stored"
        REJECTED = "rejected", "Rejected"
        EXPIRED = "expired", "Expired"  # abandoned while pending: payload purged (24 h)

    plan_id = models.CharField(max_length=64)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING)
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor = models.CharField(max_length=100)
    encrypted_payload = models.TextField(blank=True)
    line_count = models.PositiveIntegerField(default=0)
    validated_count = models.PositiveIntegerField(default=0)
    stored_count = models.PositiveIntegerField(default=0)
    errors = models.JSONField(default=list, blank=True)
    message = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Upload #{self.pk} ({self.plan_id}, {self.status})"


class LowStockAlert(models.Model):
    """Per plan: whether staff were already told it ran low (O3). Re-armed when a restock lifts
    the plan back to its threshold, so each crossing sends exactly one e-mail."""

    plan_id = models.CharField(max_length=64, unique=True)
    alerted_at = models.DateTimeField(null=True, blank=True)
    # When the e-mail for this crossing was claimed for sending (after the alert committed);
    # makes the send idempotent.
    emailed_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"Low-stock alert state for {self.plan_id}"


class StockHealthRun(models.Model):
    """One re-validation of the available stock (SPEC H1), shown on the admin home beside the
    billing sweep. A run cut off half-way (a deploy, a killed worker) is left unfinished and the
    next run continues it: the same record, with the credentials not yet checked since it
    started."""

    class Trigger(models.TextChoices):
        BEAT = "beat", "Celery beat"
        COMMAND = "command", "Management command"
        OTHER = "other", "Other"

    COUNT_KEYS = ("checked", "quarantined", "errors")

    trigger = models.CharField(max_length=10, choices=Trigger.choices)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    # Times it was continued after being cut off.
    resumed = models.PositiveIntegerField(default=0)
    checked = models.PositiveIntegerField(default=0)
    quarantined = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"Stock health run #{self.pk} ({self.trigger})"

    def counts(self) -> dict[str, int]:
        return {key: getattr(self, key) for key in self.COUNT_KEYS}
