"""Who a request acts for (SPEC 11.1, S2): a personal API token in `Authorization: Bearer`, or
the session cookie with Django's CSRF check on unsafe methods. One implementation for the JSON
API and the gateway (issue 14); low in the layers, beside the tokens it checks."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.utils import timezone

from accounts.tokens import authenticate_token, bearer_token
from codingplans.errors import DomainError


def _csrf_failure(request: HttpRequest) -> bool:
    def _noop(_request: HttpRequest) -> HttpResponse:
        return HttpResponse()

    middleware = CsrfViewMiddleware(_noop)
    middleware.process_request(request)
    return middleware.process_view(request, _noop, (), {}) is not None


class CsrfFailed(DomainError):
    code = "csrf_failed"
    status = 403
    default_message = "CSRF token missing or incorrect. Reload the page and try again."


def bearer_or_session(request: HttpRequest):
    """`Authorization: Bearer <token>` acts for the token's owner; otherwise the session cookie,
    with Django's CSRF check on unsafe methods (SPEC 11.1, S2)."""
    header = request.headers.get("Authorization", "")
    if header:
        token = bearer_token(header)
        if token is None:
            return None
        user = authenticate_token(token, now=timezone.now())
        if user is not None:
            request.user = user
            request._dont_enforce_csrf_checks = True
        return user
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    if request.method not in ("GET", "HEAD", "OPTIONS", "TRACE") and _csrf_failure(request):
        raise CsrfFailed()
    return user
