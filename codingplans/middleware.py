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


class ApiMethodNotAllowedMiddleware:
    """Keep the JSON error envelope for a method a route does not take (django-ninja answers
    those with a bare text 405)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
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
