from django import forms

from upstream.providers import registry


class AddKeyForm(forms.Form):
    # The default invalid-choice message quotes the submitted value back; keep ours generic.
    provider_id = forms.ChoiceField(
        label="Provider",
        choices=(),
        error_messages={"invalid_choice": "This provider is not supported."},
    )
    api_key = forms.CharField(
        label="API key",
        max_length=512,
        widget=forms.PasswordInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["provider_id"].choices = [
            (p.provider_id, p.name) for p in registry.all_providers()
        ]


class ReplaceKeyForm(forms.Form):
    api_key = forms.CharField(
        label="New API key",
        max_length=512,
        widget=forms.PasswordInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    confirm = forms.BooleanField(required=False)


class ConfirmForm(forms.Form):
    confirm = forms.BooleanField(required=False)


class ToggleForm(ConfirmForm):
    enabled = forms.TypedChoiceField(
        choices=(("1", "enable"), ("0", "disable")), coerce=lambda v: v == "1", required=False
    )

    def wanted(self, *, current: bool) -> bool:
        """The state the customer asked for; without one (an old form), the opposite of now."""
        if self.is_valid() and self.cleaned_data["enabled"] in (True, False):
            return self.cleaned_data["enabled"]
        return not current
