"""/api/v1/credits (SPEC 11.1, U7)."""

from __future__ import annotations

from django.utils import timezone
from ninja import Router, Schema
from pydantic import StrictBool, StrictInt, StrictStr

from adminops.audit import actor_for
from billing import selectors, services
from billing.errors import InvalidCreditAmount
from codingplans.money import InvalidAmount, format_usd, usd_to_micros

router = Router(tags=["credits"])


class AutoTopUpOut(Schema):
    enabled: bool
    amount_usd: str


class CreditsOut(Schema):
    balance_usd: str
    auto_top_up: AutoTopUpOut


class AutoTopUpIn(Schema):
    # Strict: JSON `true` must not become $1 and a float must not sneak in (money is a string
    # such as "20.00", or a whole number of dollars).
    enabled: StrictBool
    amount_usd: StrictStr | StrictInt


def _credits(account) -> dict:
    return {
        "balance_usd": format_usd(account.balance_micros),
        "auto_top_up": {
            "enabled": account.auto_top_up_enabled,
            "amount_usd": format_usd(account.auto_top_up_amount_micros),
        },
    }


@router.get("", response=CreditsOut)
def get_credits(request):
    return _credits(selectors.credit_account_for(request.auth))


@router.put("/auto-top-up", response=CreditsOut)
def put_auto_top_up(request, payload: AutoTopUpIn):
    try:
        amount = usd_to_micros(payload.amount_usd)
    except InvalidAmount as exc:
        raise InvalidCreditAmount() from exc
    account = services.set_auto_top_up(
        user=request.auth,
        enabled=payload.enabled,
        amount_micros=amount,
        actor=actor_for(request.auth),
        now=timezone.now(),
    )
    return _credits(account)
