from django.conf import settings


def flags(request):
    return {"purchase_enabled": settings.CODING_PLANS_PURCHASE_ENABLED}
