"""Subscriptions, charged terms, idempotent purchase records and availability intents."""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db import models

LIVE_STATUSES = ("active", "past_due")


class Subscription(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        PAST_DUE = "past_due", "Past due"
        CANCELED = "canceled", "Canceled"

    class Reason(models.TextChoices):
        USER_REQUESTED = "user_requested", "Canceled by the customer"
        INSUFFICIENT_CREDITS = "insufficient_credits", "Not enough credits at renewal"
        PAYMENT_FAILED = "payment_failed", "Payment failed during the grace period"
        ADMINISTRATIVE = "administrative_termination", "Ended by an operator"
        ACCOUNT_DELETED = "account_deleted", "Account deleted"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="subscriptions"
    )
    plan_id = models.CharField(max_length=64)
    provider_id = models.CharField(max_length=40)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACTIVE)
    # Snapshot at purchase: renewals charge these, whatever the catalog says later (L2).
    price_micros = models.BigIntegerField()
    billing_period_days = models.PositiveIntegerField()
    credential = models.OneToOneField(
        "inventory.Credential", on_delete=models.PROTECT, related_name="subscription"
    )
    current_period_start = models.DateTimeField()
    current_period_end = models.DateTimeField()
    cancel_at_period_end = models.BooleanField(default=False)
    grace_deadline = models.DateTimeField(null=True, blank=True)
    # The period end for which an auto top-up was already attempted (at most one per term, L4).
    top_up_attempted_for = models.DateTimeField(null=True, blank=True)
    canceled_at = models.DateTimeField(null=True, blank=True)
    cancellation_reason = models.CharField(
        max_length=32, choices=Reason.choices, null=True, blank=True
    )
    # SPEC H3: set when the provider rejects the plan's key (a gateway call, a quota fetch or the
    # BYOK key test of the installed entry answered 401/403), cleared when the credential is
    # replaced. `credential_problem_staff_emailed_at`: staff were told there was no stock to
    # replace it (once per problem). `service_credit_for`: the problem (its start) already
    # credited for the days lost (H4, once per problem).
    credential_problem_at = models.DateTimeField(null=True, blank=True)
    credential_problem_staff_emailed_at = models.DateTimeField(null=True, blank=True)
    service_credit_for = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "provider_id"],
                condition=models.Q(status__in=LIVE_STATUSES),
                name="subscriptions_one_live_per_provider",
            ),
            models.CheckConstraint(
                condition=models.Q(price_micros__gte=0), name="subscriptions_price_non_negative"
            ),
            models.CheckConstraint(
                condition=models.Q(current_period_end__gt=models.F("current_period_start")),
                name="subscriptions_period_positive",
            ),
        ]
        indexes = [
            models.Index(
                fields=["current_period_end", "id"],
                name="subs_due_idx",
                condition=models.Q(status__in=LIVE_STATUSES),
            ),
            models.Index(fields=["user", "status"]),
            models.Index(
                fields=["credential_problem_at", "id"],
                name="subs_credential_problem_idx",
                condition=models.Q(credential_problem_at__isnull=False),
            ),
        ]
        permissions = [
            ("terminate_subscription", "Can terminate subscriptions immediately"),
            ("replace_credential", "Can replace a subscription's credential"),
        ]

    def __str__(self) -> str:
        return f"Subscription #{self.pk} ({self.plan_id}, {self.status})"

    @property
    def is_live(self) -> bool:
        return self.status in LIVE_STATUSES

    @property
    def plan_name(self) -> str:
        from catalog import get_plan

        plan = get_plan(self.plan_id)
        return plan.name if plan else self.plan_id

    @property
    def provider_name(self) -> str:
        """The provider's name, from the catalog (SPEC C2, V1)."""
        from catalog import provider_name

        return provider_name(self.provider_id)


class ChargedTerm(models.Model):
    """One paid billing period; unique per (subscription, period start) so a renewal can never
    be charged twice."""

    subscription = models.ForeignKey(Subscription, on_delete=models.PROTECT, related_name="terms")
    amount_micros = models.BigIntegerField()
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    charged_at = models.DateTimeField()
    description = models.CharField(max_length=200)
    ledger_entry = models.OneToOneField(
        "billing.LedgerEntry", on_delete=models.PROTECT, related_name="charged_term"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["subscription", "period_start"], name="subscriptions_one_term_per_period"
            ),
        ]
        indexes = [models.Index(fields=["subscription", "-period_start", "-id"])]

    def __str__(self) -> str:
        return f"Term #{self.pk} of subscription {self.subscription_id}"


def term_description(plan_name: str, kind: str, start: datetime, end: datetime) -> str:
    """A ChargedTerm's `description`, as the purchase and the renewal write it."""
    return f"{plan_name} — {kind} {start:%Y-%m-%d} to {end:%Y-%m-%d}"


class PurchaseRequest(models.Model):
    """The stored outcome of a successful purchase, keyed by (user, idempotency key) (P3)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    idempotency_key = models.CharField(max_length=255)
    plan_id = models.CharField(max_length=64)
    subscription = models.ForeignKey(Subscription, on_delete=models.CASCADE, related_name="+")
    response_status = models.PositiveSmallIntegerField()
    response_body = models.JSONField()
    created_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "idempotency_key"], name="subscriptions_one_outcome_per_key"
            ),
        ]

    def __str__(self) -> str:
        return f"Purchase outcome for subscription {self.subscription_id}"


class AvailabilityIntent(models.Model):
    """ "Notify me when available" (U6): reserves nothing, charges nothing."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="availability_intents"
    )
    plan_id = models.CharField(max_length=64)
    created_at = models.DateTimeField()
    notified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "plan_id"], name="subscriptions_one_intent"),
        ]
        indexes = [
            models.Index(
                fields=["plan_id", "id"],
                name="subs_pending_intent_idx",
                condition=models.Q(notified_at__isnull=True),
            )
        ]

    def __str__(self) -> str:
        return f"Intent for {self.plan_id}"


class SweepRun(models.Model):
    """One billing sweep (SPEC O2): when, who started it, its L1 counts and its errors."""

    class Trigger(models.TextChoices):
        BEAT = "beat", "Celery beat"
        COMMAND = "command", "Management command"
        OTHER = "other", "Other"

    # The keys of `counts` (SPEC L1), in the order the sweep reports and the admin shows them.
    COUNT_KEYS = (
        "renewed",
        "past_due",
        "terminated",
        "canceled",
        "auto_top_up_triggered",
        "errors",
        "reminders_sent",  # SPEC E1, beyond L1's keys
    )

    trigger = models.CharField(max_length=10, choices=Trigger.choices)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    as_of = models.DateTimeField(help_text="The clock the sweep judged due-ness by.")
    counts = models.JSONField(default=dict)
    errors = models.JSONField(default=list, help_text="[{subscription_id, error}]")

    class Meta:
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"Sweep #{self.pk} ({self.trigger})"

    @property
    def error_count(self) -> int:
        return int(self.counts.get("errors", 0))


class CustomerEmail(models.Model):
    """One customer e-mail about a subscription event (SPEC E1), sent at most once: the row is
    unique per (kind, event key), e.g. (`renewal_receipt`, "<subscription id>:<period start>"),
    so a re-run sweep, a repeated on-commit hook or a retried task finds the row and sends
    nothing more. It is also the outbox: recorded `pending`, claimed as `sending` by the one
    task that sends it, then `sent` (or `skipped`: the customer turned the reminder off, the
    account was deleted, or the reminder no longer applies)."""

    class Kind(models.TextChoices):
        PURCHASE_RECEIPT = "purchase_receipt", "Purchase receipt"
        RENEWAL_RECEIPT = "renewal_receipt", "Renewal receipt"
        RENEWAL_REMINDER = "renewal_reminder", "Renewal reminder"
        CANCELLATION_SCHEDULED = "cancellation_scheduled", "Cancellation scheduled"
        PLAN_ENDED = "plan_ended", "Plan ended"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        SKIPPED = "skipped", "Skipped"

    kind = models.CharField(max_length=32, choices=Kind.choices)
    event_key = models.CharField(max_length=100)
    subscription = models.ForeignKey(
        Subscription, on_delete=models.CASCADE, related_name="customer_emails"
    )
    # The event's own time where it has one (a renewal's period start, a reminder's period end,
    # a cancellation's request time); the sweep's reminder scan anti-joins on it.
    event_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    created_at = models.DateTimeField()
    claimed_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.CharField(max_length=100, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["kind", "event_key"], name="subs_one_email_per_event"),
        ]
        indexes = [
            models.Index(fields=["subscription", "kind", "event_at"]),
            models.Index(
                fields=["created_at", "id"],
                name="subs_unsent_email_idx",
                condition=models.Q(status__in=["pending", "sending"]),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} for subscription {self.subscription_id} ({self.status})"
