from decimal import Decimal

from django import forms


class AutoTopUpForm(forms.Form):
    enabled = forms.BooleanField(
        required=False, label="Top up automatically when a renewal is short"
    )
    amount_usd = forms.DecimalField(
        label="Top-up amount (USD)", min_value=Decimal("0.01"), max_value=10_000, decimal_places=2
    )
