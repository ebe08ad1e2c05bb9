"""Credit accounts and the append-only ledger (SPEC P4, L2-L4, S5, U7).

The balance is a cached sum of the ledger, changed only by `billing.services.post_entry`
together with the entry that explains it; a check constraint keeps it from going negative.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class CreditAccount(models.Model):
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="credit_account"
    )
    balance_micros = models.BigIntegerField(default=0)
    auto_top_up_enabled = models.BooleanField(default=False)
    auto_top_up_amount_micros = models.BigIntegerField(default=20_000_000)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        # SPEC M6: staff with the billing role grant or remove credits from the admin.
        permissions = [("adjust_credits", "Can grant or remove credits (adjustments)")]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(balance_micros__gte=0), name="billing_balance_non_negative"
            ),
            models.CheckConstraint(
                condition=models.Q(auto_top_up_amount_micros__gt=0),
                name="billing_auto_top_up_amount_positive",
            ),
        ]

    def __str__(self) -> str:
        return f"Credit account #{self.pk}"


class LedgerEntry(models.Model):
    class Kind(models.TextChoices):
        GRANT = "grant", "Grant"
        PURCHASE = "purchase", "Plan purchase"
        RENEWAL = "renewal", "Plan renewal"
        TOP_UP = "top_up", "Auto top-up"
        TOP_UP_DECLINED = "top_up_declined", "Auto top-up declined"
        ADJUSTMENT = "adjustment", "Adjustment"
        CARD_PAYMENT = "card_payment", "Card payment"
        FORFEITED = "forfeited", "Forfeited at account deletion"
        REFUND = "refund", "Refund to card"
        REFUND_REVERSED = "refund_reversed", "Refund reversed"
        SERVICE_CREDIT = "service_credit", "Service credit"

    account = models.ForeignKey(CreditAccount, on_delete=models.PROTECT, related_name="entries")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    amount_micros = models.BigIntegerField(
        help_text="Signed: credits are positive, debits negative."
    )
    balance_after_micros = models.BigIntegerField()
    reason = models.CharField(max_length=255, blank=True)
    actor = models.CharField(max_length=100, help_text="user:<id>, staff:<id> or system:<name>")
    reference = models.CharField(max_length=100, blank=True, help_text="e.g. subscription:<id>")
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["account", "-created_at", "-id"])]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(balance_after_micros__gte=0),
                name="billing_entry_balance_after_non_negative",
            ),
            # SPEC M2: one `card_payment` entry per PaymentIntent (reference `stripe_pi:<id>`),
            # whichever path (the confirmation's answer, the return page, the webhook) grants.
            # SPEC M4, S5: an auto top-up charged by card credits a `top_up` entry with the
            # same reference, so one PaymentIntent credits once whatever its kind.
            models.UniqueConstraint(
                fields=["reference"],
                condition=models.Q(kind__in=["card_payment", "top_up"]),
                name="billing_one_card_credit_entry_per_reference",
            ),
            # SPEC M5: one `refund` and at most one `refund_reversed` entry per refund
            # (reference `refund:<id>`).
            models.UniqueConstraint(
                fields=["kind", "reference"],
                condition=models.Q(kind__in=["refund", "refund_reversed"]),
                name="billing_one_refund_entry_per_reference",
            ),
            # SPEC H4: one service credit per credential problem (reference
            # `credential_problem:<subscription id>:<problem start>`).
            models.UniqueConstraint(
                fields=["reference"],
                condition=models.Q(kind="service_credit"),
                name="billing_one_service_credit_per_reference",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount_micros}"


class TopUpAttempt(models.Model):
    """One auto top-up attempt for one due term of one subscription (SPEC L4, S5).

    Unique per (subscription, due_at): a due term can trigger at most one attempt, whatever
    number of sweeps run.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        APPROVED = "approved", "Approved"
        DECLINED = "declined", "Declined"
        # SPEC M4: the bank asks the customer to authenticate; `action_url` is where.
        REQUIRES_ACTION = "requires_action", "Needs the customer's authentication"

    account = models.ForeignKey(CreditAccount, on_delete=models.PROTECT, related_name="top_ups")
    subscription_id = models.BigIntegerField()
    due_at = models.DateTimeField()
    amount_micros = models.BigIntegerField()
    backend = models.CharField(max_length=40)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    decline_code = models.CharField(
        max_length=100, blank=True, help_text="The processor's decline code (SPEC M4)."
    )
    reference = models.CharField(
        max_length=100, blank=True, help_text="The processor's charge, e.g. stripe_pi:<id>."
    )
    action_url = models.CharField(
        max_length=200, blank=True, help_text="Where the customer completes an authentication."
    )
    ledger_entry = models.OneToOneField(
        LedgerEntry, null=True, blank=True, on_delete=models.PROTECT, related_name="top_up_attempt"
    )
    created_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["subscription_id", "due_at"], name="billing_one_top_up_per_due_term"
            ),
            models.CheckConstraint(
                condition=models.Q(amount_micros__gt=0), name="billing_top_up_amount_positive"
            ),
        ]

    def __str__(self) -> str:
        return f"Top-up #{self.pk} ({self.status})"
