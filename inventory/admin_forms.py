"""Forms of the inventory admin's own pages: the upload (I1) and a revocation outcome (R2).

Pasted credentials are never sent back to the browser, and a note is shown back only as it will
be stored (key-shaped strings redacted).
"""

from __future__ import annotations

from django import forms

from catalog import all_plans
from inventory import services, upload
from inventory.models import Credential

MAX_UPLOAD_BYTES = 8 * 1024 * 1024


def plan_choices() -> list[tuple[str, str]]:
    return [(plan.plan_id, f"{plan.name} ({plan.plan_id})") for plan in all_plans()]


class NoEchoTextarea(forms.Textarea):
    """Never sends pasted credentials back to the browser, even when the form has errors."""

    def format_value(self, value):
        return None


class SanitizedTextarea(forms.Textarea):
    """Shows a note back only as it would be stored: key-shaped strings redacted (R2)."""

    def format_value(self, value):
        return services.sanitize_note(value) if value else None


class UploadForm(forms.Form):
    plan_id = forms.ChoiceField(label="Plan", choices=plan_choices)
    lines = forms.CharField(
        label="Credentials",
        required=False,
        strip=False,
        widget=NoEchoTextarea(
            attrs={"rows": 12, "cols": 90, "autocomplete": "off", "spellcheck": "false"}
        ),
        help_text=(
            "One credential per line: <code>&lt;api key&gt;::&lt;upstream plan id&gt;</code>. "
            "Blank lines are ignored. For large batches, choose a file instead."
        ),
    )
    file = forms.FileField(
        label="Or a file",
        required=False,
        help_text="A UTF-8 text file in the same format (at most 8 MB).",
    )

    def clean(self):
        cleaned = super().clean()
        pasted = cleaned.get("lines") or ""
        chosen = cleaned.get("file")
        if pasted.strip() and chosen:
            raise forms.ValidationError("Paste the lines or choose a file, not both.")
        text = pasted
        if chosen:
            if chosen.size > MAX_UPLOAD_BYTES:
                raise forms.ValidationError("The file is larger than 8 MB; split it.")
            try:
                text = chosen.read().decode("utf-8-sig")
            except UnicodeDecodeError:
                raise forms.ValidationError("The file is not UTF-8 text.") from None
        count = upload.count_credential_lines(text)
        if count == 0:
            raise forms.ValidationError("There are no credentials to upload.")
        if too_many := upload.line_limit_message(count):
            raise forms.ValidationError(too_many)
        cleaned["text"] = text
        return cleaned


class RevocationOutcomeForm(forms.Form):
    outcome = forms.ChoiceField(
        label="Outcome",
        widget=forms.RadioSelect,
        choices=[
            (Credential.State.REVOKED.value, "Revoked at the provider"),
            (Credential.State.REVOCATION_FAILED.value, "Revocation failed"),
        ],
    )
    note = forms.CharField(
        label="Note",
        required=False,
        widget=SanitizedTextarea(attrs={"rows": 4, "cols": 80, "maxlength": 2000}),
        help_text=(
            "Required when the revocation failed. Stored with key-shaped strings redacted, "
            "at most 500 characters."
        ),
    )

    def clean_note(self):
        return services.sanitize_note(self.cleaned_data.get("note") or "")

    def clean(self):
        cleaned = super().clean()
        if services.revocation_note_missing(cleaned.get("outcome"), cleaned.get("note") or ""):
            self.add_error("note", "Say what went wrong: a failed revocation needs a note.")
        return cleaned
