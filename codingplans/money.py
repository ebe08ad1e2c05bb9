"""Money is integer microdollars everywhere; this is the one place that converts to and from USD."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

MICROS_PER_USD = 1_000_000


class InvalidAmount(ValueError):
    pass


def usd_to_micros(value: str | int | Decimal) -> int:
    """Parse a USD amount ("20", "20.5", "20.50"); at most 6 decimal places, never a float."""
    if isinstance(value, float):
        raise InvalidAmount("amounts must be given as strings, not floats")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation as exc:
        raise InvalidAmount(f"not a USD amount: {value!r}") from exc
    if not amount.is_finite():
        raise InvalidAmount("amount must be a finite number")
    micros = amount * MICROS_PER_USD
    if micros != micros.to_integral_value():
        raise InvalidAmount("amounts have at most six decimal places")
    return int(micros)


def format_usd(micros: int) -> str:
    """"20.00" — two decimals, as the API and pages show money (no currency sign)."""
    amount = (Decimal(micros) / MICROS_PER_USD).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    return f"{amount:.2f}"


def display_usd(micros: int) -> str:
    """"$20.00" / "-$5.00" for pages."""
    text = format_usd(abs(micros))
    return f"-${text}" if micros < 0 else f"${text}"
