from django.http import JsonResponse
from django.views.defaults import page_not_found


def not_found(request, exception=None):
    """JSON error envelope under /api/ (SPEC 11.1), the HTML page elsewhere."""
    if request.path.startswith("/api/"):
        return JsonResponse({"error": {"code": "not_found", "message": "Not found."}}, status=404)
    return page_not_found(request, exception)


def server_error(request):
    """Unhandled errors under /api/ keep the JSON envelope; the message reveals nothing."""
    from django.views.defaults import server_error as html_server_error

    if request.path.startswith("/api/"):
        return JsonResponse(
            {"error": {"code": "internal_error", "message": "Something went wrong on our side."}},
            status=500,
        )
    return html_server_error(request)
