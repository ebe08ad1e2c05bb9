from django import template

from codingplans.money import display_usd

register = template.Library()


@register.filter
def usd(micros: int | None) -> str:
    """Integer microdollars → "$20.00" (the only way templates show money)."""
    return display_usd(int(micros or 0))
