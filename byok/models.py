"""Personal provider keys (SPEC B1–B4): one entry per user and provider, stored encrypted."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class ByokKey(models.Model):
    class ManagedBy(models.TextChoices):
        CODING_PLAN = "coding_plan", "Coding Plan"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="byok_keys"
    )
    provider_id = models.CharField(max_length=40)
    encrypted_key = models.TextField()
    key_hint = models.CharField(max_length=8)
    enabled = models.BooleanField(default=True)
    # Set while the entry is the unchanged installed entry of a Coding Plan (SPEC B2, B3).
    managed_by = models.CharField(max_length=20, choices=ManagedBy.choices, null=True, blank=True)
    subscription = models.OneToOneField(
        "subscriptions.Subscription",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="installed_entry",
    )
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "provider_id"], name="byok_one_key_per_provider"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.provider_id} key {self.key_hint}"

    def __repr__(self) -> str:
        return f"<ByokKey id={self.pk} provider={self.provider_id} hint={self.key_hint}>"

    @property
    def provider_name(self) -> str:
        from catalog import provider_name

        return provider_name(self.provider_id)
