"""Usage metering for the gateway (SPEC G3): one row per completed request."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class GatewayRequest(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    subscription = models.ForeignKey(
        "subscriptions.Subscription",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="gateway_requests",
    )
    provider_id = models.CharField(max_length=40)
    model = models.CharField(max_length=100)
    streamed = models.BooleanField(default=False)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    latency_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["subscription", "created_at"])]

    def __str__(self) -> str:
        return f"Gateway request #{self.pk} ({self.model})"
