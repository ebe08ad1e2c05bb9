from django import forms
from django.conf import settings


class AddKeyForm(forms.Form):
    provider_id = forms.ChoiceField(label="Provider", choices=())
    api_key = forms.CharField(
        label="API key",
        max_length=512,
        widget=forms.PasswordInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["provider_id"].choices = list(settings.PROVIDERS.items())


class ReplaceKeyForm(forms.Form):
    api_key = forms.CharField(
        label="New API key",
        max_length=512,
        widget=forms.PasswordInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    confirm = forms.BooleanField(required=False)


class ConfirmForm(forms.Form):
    confirm = forms.BooleanField(required=False)
