"""Base of every app's domain errors: a stable snake_case `code`, an HTTP status, a message.

The API maps any DomainError to `{"error": {"code", "message"}}` with its status; pages show
the message. Messages are written for the customer and never carry secrets.
"""

from __future__ import annotations


class DomainError(Exception):
    code = "error"
    status = 400
    default_message = "The request could not be completed."

    def __init__(self, message: str | None = None):
        self.message = message or self.default_message
        super().__init__(self.message)


class NotFound(DomainError):
    code = "not_found"
    status = 404
    default_message = "Not found."


class InvalidInput(DomainError):
    code = "invalid_request"
    status = 400
    default_message = "The request is not valid."
