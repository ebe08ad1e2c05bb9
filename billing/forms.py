from django import forms

from codingplans.money import MICROS_PER_USD, InvalidAmount, usd_to_micros

CENT_MICROS = 10_000


class UsdAmountField(forms.Field):
    """A USD amount typed by a customer, cleaned to integer microdollars through the one money
    parser (codingplans.money): plain digits with at most two decimals. Anything else -- an
    exponent ("1e3"), NaN, a sign, other digit scripts, a huge number -- is a form error,
    never an exception (issue 13 item 18)."""

    def __init__(self, *, min_micros: int, max_micros: int, **kwargs):
        self.min_micros, self.max_micros = min_micros, max_micros
        kwargs.setdefault("widget", forms.TextInput(attrs={"inputmode": "decimal"}))
        super().__init__(**kwargs)

    def to_python(self, value):
        if value in self.empty_values:
            return None
        text = str(value).strip()
        if not text:
            return None
        message = (
            f"Enter an amount in USD between ${self.min_micros / MICROS_PER_USD:,.2f} and "
            f"${self.max_micros / MICROS_PER_USD:,.2f}, with at most two decimals "
            '(for example "20" or "20.50").'
        )
        try:
            micros = usd_to_micros(text)
        except InvalidAmount:
            raise forms.ValidationError(message, code="invalid") from None
        if micros % CENT_MICROS or not self.min_micros <= micros <= self.max_micros:
            raise forms.ValidationError(message, code="invalid")
        return micros


class AutoTopUpForm(forms.Form):
    enabled = forms.BooleanField(
        required=False, label="Top up automatically when a renewal is short"
    )
    amount_usd = UsdAmountField(
        label="Top-up amount (USD)", min_micros=CENT_MICROS, max_micros=10_000 * MICROS_PER_USD
    )
