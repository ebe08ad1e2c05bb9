"""The gateway's errors and its error envelope (SPEC G1–G3, 11.1)."""

from __future__ import annotations

from django.http import JsonResponse

from codingplans.errors import DomainError
from upstream.providers import registry
from upstream.providers.base import DEFAULT_RETRY_AFTER_SECONDS


class GatewayError(DomainError):
    pass


class NoProviderKey(GatewayError):
    code = "no_provider_key"
    status = 403
    default_message = (
        "You have no enabled key for this provider. Buy a Coding Plan or add your own key in BYOK "
        "(and make sure it is enabled)."
    )


class UnknownProvider(GatewayError):
    code = "unknown_provider"
    status = 400

    def __init__(self, message: str | None = None):
        if message is None:  # the registered providers, each with an example model
            examples = " or ".join(
                f"{p.provider_id}/{p.example_model}" for p in registry.all_providers()
            )
            message = f"Unknown provider: name the model as <provider>/<model>, e.g. {examples}."
        super().__init__(message)


class InvalidRequest(GatewayError):
    code = "invalid_request"
    status = 400
    default_message = "The body must be a JSON object with a model and messages."


class RateLimited(GatewayError):
    code = "rate_limited"
    status = 429
    default_message = "Too many requests with this token; slow down and retry in a minute."


class ProviderTimeout(GatewayError):
    code = "provider_timeout"
    status = 504
    default_message = "The provider did not answer in time."


class ProviderKeyRejected(GatewayError):
    code = "provider_key_rejected"
    status = 502
    default_message = "The provider rejected the key in your BYOK settings."


class ProviderRateLimited(GatewayError):
    code = "provider_rate_limited"
    status = 429
    default_message = "The provider is rate limiting this key; retry later."

    def __init__(
        self, message: str | None = None, *, retry_after: int = DEFAULT_RETRY_AFTER_SECONDS
    ):
        self.retry_after = retry_after  # whole seconds, sent as Retry-After (SPEC G3)
        super().__init__(message)


class ProviderError(GatewayError):
    code = "provider_error"
    status = 502
    default_message = "The provider returned an error."


def error_response(exc: DomainError) -> JsonResponse:
    """The error envelope; a provider rate limit always carries Retry-After (SPEC G3)."""
    response = JsonResponse(
        {"error": {"code": exc.code, "message": exc.message}}, status=exc.status
    )
    if isinstance(exc, ProviderRateLimited):
        response["Retry-After"] = str(exc.retry_after)
    return response
