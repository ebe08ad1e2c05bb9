"""The JSON API under /api/v1/ (SPEC 11.1): auth, the error envelope, and the app routers."""

from __future__ import annotations

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

from accounts.auth import bearer_or_session
from codingplans.errors import DomainError

api = NinjaAPI(
    title="Coding Plans API",
    version="1",
    urls_namespace="api",
    auth=bearer_or_session,
    docs_url="/docs",
)


def error_response(request: HttpRequest, status: int, code: str, message: str) -> HttpResponse:
    return api.create_response(
        request, {"error": {"code": code, "message": message}}, status=status
    )


@api.exception_handler(DomainError)
def _domain_error(request: HttpRequest, exc: DomainError) -> HttpResponse:
    return error_response(request, exc.status, exc.code, exc.message)


@api.exception_handler(AuthenticationError)
def _unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    response = error_response(
        request, 401, "unauthenticated", "Log in, or send a valid API token as a Bearer header."
    )
    response["WWW-Authenticate"] = "Bearer"
    return response


@api.exception_handler(ValidationError)
def _invalid(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    fields = sorted({".".join(str(p) for p in e.get("loc", [])[1:]) or "body" for e in exc.errors})
    return error_response(
        request, 400, "invalid_request", f"The request is not valid ({', '.join(fields)})."
    )


@api.exception_handler(RequestDataTooBig)
def _too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    return error_response(request, 413, "request_too_large", "The request body is too large.")


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
    return error_response(request, exc.status_code, code, str(exc.message))


def _register_routers() -> None:
    from billing.api import router as credits_router
    from byok.api import router as byok_router
    from payments.api import router as card_payments_router
    from payments.api import webhook_router as stripe_webhook_router
    from subscriptions.api import register as register_subscriptions

    api.add_router("/credits", credits_router)
    api.add_router("/credits", card_payments_router)
    api.add_router("/payments", stripe_webhook_router)
    api.add_router("/byok", byok_router)
    register_subscriptions(api)


_register_routers()
