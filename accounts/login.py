"""Log-in with a rate limit per client address and per account (brute-force guard).

One implementation for both log-in pages: `/accounts/login/` (customers) and `/admin/login/`
(staff, the most privileged accounts) check the same limiter from their forms' `clean()`, before
any password is checked, and share one budget per account. The budget is keyed on the account
the address resolves to (so "Alice@…", "ſtaff@…" and every other way of typing an address that
logs in as an account spend that account's attempts), and on the normalised address when no
account has it.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError

from accounts.models import User, login_address
from codingplans.ratelimit import hit

RATE_LIMITED_MESSAGE = "Too many log-in attempts. Wait a minute and try again."


def login_budget(username: str) -> str:
    """Whose attempts a log-in with `username` spends: the account it logs in as (the same
    lookup as the authentication backend), else the normalised address. Text no address can
    hold (a NUL, which PostgreSQL refuses in a query, or an over-long string) is looked up in no
    table: it can name no account."""
    email_max = User._meta.get_field("email").max_length
    if "\x00" in username or len(username.strip()) > email_max:
        return f"address:{login_address(username.replace(chr(0), ''))[: email_max + 1]}"
    try:
        user = User.objects.get_by_natural_key(username)
    except User.DoesNotExist:
        return f"address:{login_address(username)}"
    return f"user:{user.pk}"


def login_attempt_allowed(request, username: str) -> bool:
    """Count one log-in attempt; False once the client address or the account is over its
    limit for the minute (LOGIN_RATE_LIMIT_PER_MINUTE per account, three times that per
    address). Both counters always count, so a refused attempt still spends budget."""
    limit = settings.LOGIN_RATE_LIMIT_PER_MINUTE
    address = request.META.get("REMOTE_ADDR", "") if request is not None else ""
    by_address = hit("login-ip", address, limit=limit * 3)
    by_account = hit("login-account", login_budget(username), limit=limit)
    return by_address and by_account


class RateLimitedAuthenticationMixin:
    """For an AuthenticationForm: refuse over the limit before authenticating (so no password
    is checked, right or wrong) with a `rate_limited` error the page shows."""

    def clean(self):
        username = self.cleaned_data.get("username") or self.data.get("username") or ""
        if not login_attempt_allowed(self.request, str(username)):
            raise ValidationError(RATE_LIMITED_MESSAGE, code="rate_limited")
        return super().clean()


class LoginForm(RateLimitedAuthenticationMixin, AuthenticationForm):
    pass


class AdminLoginForm(RateLimitedAuthenticationMixin, AdminAuthenticationForm):
    pass


def _refused_by_limit(response):
    form = (getattr(response, "context_data", None) or {}).get("form")
    if form is not None and form.has_error(NON_FIELD_ERRORS, "rate_limited"):
        response.status_code = 429
    return response


class RateLimitedLoginView(auth_views.LoginView):
    """`/accounts/login/`."""

    template_name = "accounts/login.html"
    form_class = LoginForm

    def form_invalid(self, form):
        return _refused_by_limit(super().form_invalid(form))


def admin_login(request, extra_context=None):
    """`/admin/login/`: the admin site's own view (its form is `AdminLoginForm`, set in
    accounts/admin.py), answering 429 when the limit refused the attempt."""
    return _refused_by_limit(admin.site.login(request, extra_context))
