"""Project middleware. Each one runs natively in both modes: under ASGI (uvicorn serves the
streaming gateway) a synchronous-only middleware makes Django run the rest of the chain and the
view in a worker thread, and adapting back to the async view costs a thread hop and a thread
per request — measured at several milliseconds of the gateway's added latency (issue 8).
"""

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.views.defaults import page_not_found
from whitenoise.middleware import WhiteNoiseMiddleware

from codingplans.errors import NotFound


class _DualModeMiddleware:
    """Django's pattern for middleware that is both sync- and async-capable: `handle` takes the
    response and may replace it."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(self.get_response):
            markcoroutinefunction(self)

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self.__acall__(request)
        return self.handle(request, self.get_response(request))

    async def __acall__(self, request):
        return self.handle(request, await self.get_response(request))

    def handle(self, request, response):
        return response


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    """WhiteNoise, which is synchronous only, made dual-mode: static files are still served by
    WhiteNoise (in a thread under ASGI); every other request passes straight through."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        super().__init__(get_response)
        if iscoroutinefunction(self.get_response):
            markcoroutinefunction(self)

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self.__acall__(request)
        return super().__call__(request)

    async def __acall__(self, request):
        if self.autorefresh:
            static_file = await sync_to_async(self.find_file)(request.path_info)
        else:
            static_file = self.files.get(request.path_info)
        if static_file is not None:
            return await sync_to_async(self.serve)(static_file, request)
        return await self.get_response(request)


class NotFoundMiddleware(_DualModeMiddleware):
    """A page that asks for someone else's object gets the same 404 as a missing one (SPEC U5)."""

    def process_exception(self, request, exception):
        if isinstance(exception, NotFound):
            return page_not_found(request, exception)
        return None


class SecurityHeadersMiddleware(_DualModeMiddleware):
    """Content-Security-Policy on every response (the admin included)."""

    def handle(self, request, response):
        from django.conf import settings

        policy = getattr(settings, "CONTENT_SECURITY_POLICY", "")
        if policy and "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = policy
        return response


class ApiMethodNotAllowedMiddleware(_DualModeMiddleware):
    """Keep the JSON error envelope for a method a route does not take (django-ninja answers
    those with a bare text 405)."""

    def handle(self, request, response):
        if (
            response.status_code == 405
            and request.path.startswith("/api/")
            and "json" not in response.get("Content-Type", "")
        ):
            from django.http import JsonResponse

            allowed = response.get("Allow", "")
            response = JsonResponse(
                {
                    "error": {
                        "code": "method_not_allowed",
                        "message": f"Use {allowed or 'another method'} for this path.",
                    }
                },
                status=405,
            )
            if allowed:
                response["Allow"] = allowed
        return response


class GatewayFastPathMiddleware(_DualModeMiddleware):
    """Under ASGI, hand the gateway route (SPEC G1) straight to its async view, applying by hand
    the parts of the middleware stack it needs, all in-line and synchronous-free: Django's
    security headers and SSL redirect, the session and lazy user for a session caller (the view
    does its own CSRF check), CSP and X-Frame-Options. Each Django middleware would otherwise
    run its hooks in a worker thread: about a dozen thread hops per call, measured at ≈3 ms of
    the gateway's added latency (issue 8). Every other request, and every request under WSGI
    or the test client, takes the full stack. Sits first in MIDDLEWARE."""

    # What the gateway route does about every other entry of settings.MIDDLEWARE. A middleware
    # added there must be added here too, applied in-line or skipped with the reason: the
    # fast path would otherwise silently bypass it (tests/gateway/test_fast_path.py fails).
    APPLIED_INLINE = {
        "django.middleware.security.SecurityMiddleware": "security",
        "django.contrib.sessions.middleware.SessionMiddleware": "sessions",
        "django.contrib.auth.middleware.AuthenticationMiddleware": "auth",
        "django.middleware.clickjacking.XFrameOptionsMiddleware": "frames",
        "codingplans.middleware.SecurityHeadersMiddleware": "csp",
    }
    NOT_NEEDED = {
        "codingplans.middleware.StaticFilesMiddleware": "the gateway path is not a static file",
        "django.middleware.common.CommonMiddleware": (
            "Content-Length is set in-line; an API path gets no slash redirect"
        ),
        "django.middleware.csrf.CsrfViewMiddleware": "the view checks CSRF for a session caller",
        "django.contrib.messages.middleware.MessageMiddleware": "the gateway shows no messages",
        "codingplans.middleware.NotFoundMiddleware": "the view answers its errors in JSON",
        "codingplans.middleware.ApiMethodNotAllowedMiddleware": (
            "the view answers 405 in the JSON envelope itself"
        ),
    }

    def __init__(self, get_response):
        from django.contrib.auth.middleware import AuthenticationMiddleware
        from django.contrib.sessions.middleware import SessionMiddleware
        from django.middleware.clickjacking import XFrameOptionsMiddleware
        from django.middleware.security import SecurityMiddleware

        super().__init__(get_response)
        self.security = SecurityMiddleware(get_response)
        self.sessions = SessionMiddleware(get_response)
        self.auth = AuthenticationMiddleware(get_response)
        self.frames = XFrameOptionsMiddleware(get_response)
        self.csp = SecurityHeadersMiddleware(get_response)

    async def __acall__(self, request):
        from gateway.views import GATEWAY_PATH, chat_completions

        if request.path_info != GATEWAY_PATH:
            return await self.get_response(request)
        response = self.redirect(request)
        if response is None:
            self.sessions.process_request(request)  # lazy: no query unless a session is used
            self.auth.process_request(request)
            response = await chat_completions(request)
            if request.session.accessed:  # a session caller: cookie and Vary as usual
                response = await sync_to_async(self.sessions.process_response)(request, response)
        return self.secure(request, response)

    def redirect(self, request):
        """SECURE_SSL_REDIRECT's redirect for a plain-HTTP request, or None."""
        return self.security.process_request(request)

    def secure(self, request, response):
        """The response with what the full stack adds to it: Content-Length, the security
        headers, X-Frame-Options and the CSP (also used by gateway.asgi, issue 20)."""
        if not response.streaming and not response.has_header("Content-Length"):
            response.headers["Content-Length"] = str(len(response.content))  # as CommonMiddleware
        response = self.security.process_response(request, response)
        response = self.frames.process_response(request, response)
        return self.csp.handle(request, response)
