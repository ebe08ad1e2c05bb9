"""Log-in with a rate limit per client address and per e-mail (brute-force guard)."""

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.shortcuts import render

from codingplans.ratelimit import hit


class RateLimitedLoginView(auth_views.LoginView):
    template_name = "accounts/login.html"

    def post(self, request, *args, **kwargs):
        limit = settings.LOGIN_RATE_LIMIT_PER_MINUTE
        address = request.META.get("REMOTE_ADDR", "")
        email = (request.POST.get("username") or "").strip().lower()
        allowed = hit("login-ip", address, limit=limit * 3) & hit("login-email", email, limit=limit)
        if not allowed:
            form = self.get_form()
            form.errors.clear()
            return render(
                request,
                self.template_name,
                {"form": form, "rate_limited": True, "next": request.POST.get("next", "")},
                status=429,
            )
        return super().post(request, *args, **kwargs)
