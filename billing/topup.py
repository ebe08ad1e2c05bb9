"""Payment processor interface for auto top-up (SPEC L4, S5, M7).

The sweep only ever talks to `get_backend()`. Today's backends are simulated and chosen by
`CODING_PLANS_TOP_UP_BACKEND`; when it is unset (production without a processor) auto top-up is
unavailable: `top_up_available()` is false, customers cannot turn it on and the sweep starts no
attempt (settings refuse a simulated backend with DEBUG off unless explicitly allowed). A real
processor (e.g. Stripe: charge the saved payment method
off-session with the attempt id as its idempotency key) implements the same `charge` method and
is added to `BACKENDS` — nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from django.conf import settings


@dataclass(frozen=True)
class ChargeResult:
    approved: bool
    reference: str = ""
    decline_reason: str = ""


class TopUpBackend(Protocol):
    name: str

    def charge(self, *, attempt_id: int, user_id: int, amount_micros: int) -> ChargeResult:
        """Charge the customer's saved payment method. Must be idempotent on `attempt_id`."""


class SimulatedApprove:
    name = "simulated-approve"

    def charge(self, *, attempt_id: int, user_id: int, amount_micros: int) -> ChargeResult:
        return ChargeResult(approved=True, reference=f"sim-{attempt_id}")


class SimulatedDecline:
    name = "simulated-decline"

    def charge(self, *, attempt_id: int, user_id: int, amount_micros: int) -> ChargeResult:
        return ChargeResult(approved=False, decline_reason="card_declined")


BACKENDS: dict[str, type] = {
    SimulatedApprove.name: SimulatedApprove,
    SimulatedDecline.name: SimulatedDecline,
}


def top_up_available() -> bool:
    """Whether a top-up backend is configured and registered (SPEC M7): unset means no auto
    top-up at all, and so does a backend whose app has not registered it in BACKENDS."""
    return settings.CODING_PLANS_TOP_UP_BACKEND in BACKENDS


def get_backend() -> TopUpBackend:
    """The configured backend. Callers check `top_up_available()` first: with none configured
    this raises rather than fall back to anything that could approve without a payment."""
    name = settings.CODING_PLANS_TOP_UP_BACKEND
    if not name:
        raise LookupError("no auto top-up backend is configured (CODING_PLANS_TOP_UP_BACKEND)")
    return BACKENDS[name]()
