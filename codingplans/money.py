"""Money is integer microdollars everywhere; this is the one place that converts to and from USD."""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal

MICROS_PER_USD = 1_000_000


class InvalidAmount(ValueError):
    pass


# ASCII digits only (`\d` would also take other scripts' digits) and no trailing newline.
_USD_SHAPE = re.compile(r"\A[+-]?[0-9]{1,12}(\.[0-9]{1,6})?\Z")


def usd_to_micros(value: str | int | Decimal) -> int:
    """Parse a USD amount ("20", "20.5", "20.50"): plain digits with at most six decimal places,
    never a float, an exponent, underscores or silent rounding."""
    if isinstance(value, bool | float):
        raise InvalidAmount("amounts must be given as strings, not floats")
    if isinstance(value, Decimal) and (not value.is_finite() or abs(value.adjusted()) > 12):
        raise InvalidAmount("not a USD amount")  # before printing 1E+999999999 digit by digit
    # A Decimal prints with an exponent ("1E+3") once it has one: read its fixed-point digits.
    text = (format(value, "f") if isinstance(value, Decimal) else str(value)).strip()
    if not _USD_SHAPE.match(text):
        raise InvalidAmount("not a USD amount")
    whole, _, fraction = text.lstrip("+-").partition(".")
    micros = int(whole) * MICROS_PER_USD + int(fraction.ljust(6, "0") or 0)
    return -micros if text.startswith("-") else micros


def format_usd(micros: int) -> str:
    """ "20.00" — two decimals, as the API and pages show money (no currency sign)."""
    amount = (Decimal(micros) / MICROS_PER_USD).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    return f"{amount:.2f}"


def display_usd(micros: int) -> str:
    """ "$20.00" / "-$5.00" for pages."""
    text = format_usd(abs(micros))
    return f"-${text}" if micros < 0 else f"${text}"
