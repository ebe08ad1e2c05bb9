from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from accounts.login import admin_login
from codingplans.api import api
from gateway.views import chat_completions

urlpatterns = [
    path("", RedirectView.as_view(url="/subscriptions/", permanent=False)),
    # The admin's log-in, with the same rate limit and per-account budget as /accounts/login/.
    path("admin/login/", admin_login),
    path("admin/", admin.site.urls),
    # The gateway is a plain async view (streaming under ASGI), ahead of the ninja API.
    path("api/v1/gateway/chat/completions", chat_completions, name="gateway-chat-completions"),
    path("api/v1/", api.urls),
    path("accounts/", include("accounts.urls")),
    path("account/", include("accounts.account_urls")),
    path("credits/", include("billing.urls")),
    path("credits/", include("payments.urls")),
    path("byok/", include("byok.urls")),
    path("subscriptions/", include("subscriptions.urls")),
]

handler404 = "codingplans.views.not_found"
handler500 = "codingplans.views.server_error"
