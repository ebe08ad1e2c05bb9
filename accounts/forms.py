from django import forms
from django.conf import settings
from django.contrib.auth import password_validation
from django.contrib.auth.forms import PasswordResetForm
from django.core.exceptions import ValidationError

from accounts.models import User, login_address
from codingplans.ratelimit import hit


class SignupForm(forms.Form):
    email = forms.EmailField(
        max_length=254, widget=forms.EmailInput(attrs={"autocomplete": "email"})
    )
    full_name = forms.CharField(max_length=150, required=False, label="Name")
    password = forms.CharField(
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}), strip=False
    )

    def clean_password(self):
        password = self.cleaned_data["password"]
        # Pass the would-be user so the similarity validator can refuse a password like the
        # e-mail address (fields before `password` are already cleaned).
        candidate = User(
            email=self.cleaned_data.get("email", ""),
            full_name=self.cleaned_data.get("full_name", ""),
        )
        password_validation.validate_password(password, user=candidate)
        return password


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100, required=False, initial="API token")


RESET_LIMITED_MESSAGE = (
    "Too many reset requests for this address or from your network. Wait an hour and try again."
)


class PasswordResetRequestForm(PasswordResetForm):
    """SPEC A1: the reset request, rate-limited per typed address and per client address before
    anything is looked up, so the limit answers alike for known and unknown addresses. The
    e-mails themselves are queued by the view (accounts.views.PasswordResetRequestView)."""

    email = forms.EmailField(
        label="E-mail",
        max_length=254,
        widget=forms.EmailInput(attrs={"autocomplete": "email"}),
    )

    def __init__(self, *args, request=None, **kwargs):
        self.request = request
        super().__init__(*args, **kwargs)

    def clean_email(self):
        email = self.cleaned_data["email"]
        client = self.request.META.get("REMOTE_ADDR", "") if self.request is not None else ""
        by_address = hit(
            "password-reset-address",
            login_address(email),
            limit=settings.PASSWORD_RESET_RATE_LIMIT_PER_HOUR,
            window_seconds=3600,
        )
        by_client = hit(
            "password-reset-ip",
            client,
            limit=settings.PASSWORD_RESET_IP_RATE_LIMIT_PER_HOUR,
            window_seconds=3600,
        )
        if not (by_address and by_client):
            raise ValidationError(RESET_LIMITED_MESSAGE, code="rate_limited")
        return email


class EmailChangeForm(forms.Form):
    """SPEC A1: a new address, confirmed by the current password; the change is made only
    when the link sent to the new address is followed."""

    email = forms.EmailField(
        label="New e-mail address",
        max_length=254,
        widget=forms.EmailInput(attrs={"autocomplete": "email"}),
    )
    password = forms.CharField(
        label="Current password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )

    def __init__(self, *args, user=None, **kwargs):
        self.user = user
        super().__init__(*args, **kwargs)

    def clean_password(self):
        password = self.cleaned_data["password"]
        if self.user is None or not self.user.check_password(password):
            raise ValidationError("That password is not correct.", code="wrong_password")
        return password


class NotificationsForm(forms.Form):
    renewal_reminders = forms.BooleanField(
        required=False,
        label="Remind me 3 days before a renewal my balance will not cover",
    )
