"""Card payments through Stripe (SPEC M1-M3, M9): the customer's Stripe Customer and saved card,
each card payment, and every webhook event received.

Nothing secret is stored: no card number, CVC, client secret or key. A payment's credits are
one billing `LedgerEntry` (`card_payment`), pointed at one-to-one, so the database itself
refuses a second grant for one payment (and billing's partial unique index refuses a second
entry for one PaymentIntent).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models.functions import Mod

from billing.models import LedgerEntry, TopUpAttempt


class StripeCustomer(models.Model):
    """The Stripe Customer made for a user on first need, and the one saved card (SPEC M3)."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="stripe_customer"
    )
    customer_id = models.CharField(max_length=255, unique=True)
    payment_method_id = models.CharField(max_length=255, blank=True)
    card_brand = models.CharField(max_length=20, blank=True)
    card_last4 = models.CharField(max_length=4, blank=True)
    card_exp_month = models.PositiveSmallIntegerField(null=True, blank=True)
    card_exp_year = models.PositiveSmallIntegerField(null=True, blank=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"Stripe customer #{self.pk}"


class CardPayment(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        REQUIRES_ACTION = "requires_action", "Needs authentication"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        REFUNDED = "refunded", "Refunded"
        PARTIALLY_REFUNDED = "partially_refunded", "Partially refunded"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="card_payments"
    )
    amount_micros = models.BigIntegerField()
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    payment_intent_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    payment_method_id = models.CharField(max_length=255, blank=True)
    save_card = models.BooleanField(default=False)
    card_brand = models.CharField(max_length=20, blank=True)
    card_last4 = models.CharField(max_length=4, blank=True)
    failure_code = models.CharField(max_length=100, blank=True)
    refunded_micros = models.BigIntegerField(default=0)
    ledger_entry = models.OneToOneField(
        LedgerEntry,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="card_payment",
    )
    top_up_attempt = models.OneToOneField(
        TopUpAttempt,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="card_payment",
        help_text="Set for an automatic top-up charged off-session (SPEC M4).",
    )
    charge_started_at = models.DateTimeField(
        null=True, blank=True, help_text="When the off-session charge was last sent to Stripe."
    )
    card_settled_at = models.DateTimeField(
        null=True, blank=True, help_text="When the card was saved or detached after the outcome."
    )
    receipt_sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    succeeded_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["user", "-id"])]
        constraints = [
            # SPEC M1's limits for a payment the customer makes; an automatic top-up (M4) is
            # whole dollars, from $1 up to the largest auto top-up setting ($10,000).
            models.CheckConstraint(
                condition=(
                    models.Q(
                        top_up_attempt__isnull=True,
                        amount_micros__gte=5_000_000,
                        amount_micros__lte=1_000_000_000,
                    )
                    | models.Q(
                        top_up_attempt__isnull=False,
                        amount_micros__gte=1_000_000,
                        amount_micros__lte=10_000_000_000,
                    )
                )
                & models.lookups.Exact(Mod("amount_micros", 10_000), 0),
                name="payments_amount_within_limits_whole_cents",
            ),
            models.CheckConstraint(
                condition=models.Q(refunded_micros__gte=0)
                & models.Q(refunded_micros__lte=models.F("amount_micros")),
                name="payments_refunded_within_amount",
            ),
            models.CheckConstraint(
                condition=~models.Q(status__in=["succeeded", "refunded", "partially_refunded"])
                | models.Q(ledger_entry__isnull=False),
                name="payments_succeeded_has_ledger_entry",
            ),
        ]

    def __str__(self) -> str:
        return f"Card payment #{self.pk} ({self.status})"


class Refund(models.Model):
    """One refund of (part of) a card payment (SPEC M5). Written, with its `refund` ledger
    entry, before Stripe is called; settled by Stripe's answer or its webhooks. A failed refund
    puts the credits back (`reversal_entry`, kind `refund_reversed`)."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending at Stripe"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed (credits put back)"

    payment = models.ForeignKey(CardPayment, on_delete=models.PROTECT, related_name="refunds")
    amount_micros = models.BigIntegerField()
    reason = models.CharField(max_length=255)
    actor = models.CharField(max_length=100, help_text="staff:<id> or system:<name>")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    stripe_refund_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    failure_reason = models.CharField(max_length=100, blank=True)
    ledger_entry = models.OneToOneField(
        LedgerEntry, on_delete=models.PROTECT, related_name="refund"
    )
    reversal_entry = models.OneToOneField(
        LedgerEntry,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="reversed_refund",
    )
    email_sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        permissions = [("refund_cardpayment", "Can refund card payments")]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(amount_micros__gt=0)
                & models.lookups.Exact(Mod("amount_micros", 10_000), 0),
                name="payments_refund_amount_positive_whole_cents",
            ),
            models.CheckConstraint(
                condition=~models.Q(status="failed") | models.Q(reversal_entry__isnull=False),
                name="payments_failed_refund_is_reversed",
            ),
        ]

    def __str__(self) -> str:
        return f"Refund #{self.pk} ({self.status})"


class WebhookEvent(models.Model):
    """Every signed Stripe event received, once per event id (SPEC M2): a replayed or
    concurrent delivery finds the row and changes nothing."""

    event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100)
    object_id = models.CharField(max_length=255, blank=True)
    payment = models.ForeignKey(
        CardPayment, null=True, blank=True, on_delete=models.PROTECT, related_name="events"
    )
    outcome = models.CharField(max_length=100, blank=True)
    received_at = models.DateTimeField()

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"
