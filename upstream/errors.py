from codingplans.errors import DomainError


class UpstreamError(DomainError):
    """A failed call to a provider. `kind` is one of network | http | invalid_response |
    application | subscription_inactive | invalid_key; the message is ours, never the provider's
    text."""

    code = "upstream_error"
    status = 502

    def __init__(self, kind: str, message: str, *, http_status: int | None = None):
        self.kind = kind
        self.http_status = http_status
        super().__init__(message)
