from django import forms
from django.contrib.auth import password_validation

from accounts.models import User


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
