"""The `stripe` auto top-up backend (SPEC M4, M7): the customer's saved card, charged
off-session. Registered in `billing.topup.BACKENDS` by `PaymentsConfig.ready()` — billing never
imports payments — and selected with `CODING_PLANS_TOP_UP_BACKEND=stripe`."""

from __future__ import annotations

from datetime import datetime

from django.utils import timezone

from billing.topup import ChargeResult


class StripeTopUp:
    name = "stripe"

    def charge(
        self, *, attempt_id: int, user_id: int, amount_micros: int, now: datetime | None = None
    ) -> ChargeResult:
        from payments.services import charge_top_up

        return charge_top_up(
            attempt_id=attempt_id,
            user_id=user_id,
            amount_micros=amount_micros,
            now=now or timezone.now(),
        )

    def can_charge(self, *, user_id: int) -> bool:
        from payments.services import can_charge_top_up

        return can_charge_top_up(user_id=user_id)
