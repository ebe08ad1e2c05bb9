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
