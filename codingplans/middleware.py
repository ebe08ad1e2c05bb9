from django.views.defaults import page_not_found

from codingplans.errors import NotFound


class NotFoundMiddleware:
    """A page that asks for someone else's object gets the same 404 as a missing one (SPEC U5)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if isinstance(exception, NotFound):
            return page_not_found(request, exception)
        return None


class SecurityHeadersMiddleware:
    """Content-Security-Policy on every response (the admin included)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        from django.conf import settings

        response = self.get_response(request)
        policy = getattr(settings, "CONTENT_SECURITY_POLICY", "")
        if policy and "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = policy
        return response
