"""Payment processor interface for auto top-up (SPEC L4, S5, M4, M7).

The sweep only ever talks to `get_backend()`. The backends are chosen by
`CODING_PLANS_TOP_UP_BACKEND`: `simulated-approve` / `simulated-decline` (development and tests)
are defined here; `stripe` (the customer's saved card, charged off-session) lives in the
payments app, which registers it in `BACKENDS` from `PaymentsConfig.ready()` — billing never
imports payments (docs/architecture.md, layers). When the setting is unset (production without a
processor) auto top-up is unavailable: `top_up_available()` is false, customers cannot turn it
on and the sweep starts no attempt (settings refuse a simulated backend with DEBUG off unless
explicitly allowed).

A backend implements `charge` (idempotent on the attempt id) and `can_charge` (whether this
customer can be charged at all: the stripe backend needs a saved card; SPEC M4 "no saved card →
no attempt"). `charge` may settle the attempt itself (the stripe backend records the outcome
through the card-payment path, in the same transaction as the card payment); the
`ChargeResult` it returns is then recorded a second time, which changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from django.conf import settings

MICROS_PER_DOLLAR = 1_000_000


@dataclass(frozen=True)
class ChargeResult:
    """A processor's answer. `approved`: the money is in (credit the attempt). Otherwise one of:
    `requires_action` (the bank asks the customer to authenticate at `action_url`), `pending`
    (no answer yet: the attempt stays pending and is retried or settled later), or a decline
    with its `decline_reason` (the processor's code, e.g. `insufficient_funds`)."""

    approved: bool
    reference: str = ""
    decline_reason: str = ""
    requires_action: bool = False
    action_url: str = ""
    pending: bool = False
    # The credit entry's reference when the processor's charge has an id of its own
    # (`stripe_pi:<id>`): unique among card credits, so one charge credits once (SPEC M2, M4).
    ledger_reference: str = ""

    @property
    def status(self) -> str:
        if self.approved:
            return "approved"
        if self.requires_action:
            return "requires_action"
        if self.pending:
            return "pending"
        return "declined"


class TopUpBackend(Protocol):
    name: str

    def charge(self, *, attempt_id: int, user_id: int, amount_micros: int) -> ChargeResult:
        """Charge the customer's saved payment method. Must be idempotent on `attempt_id`."""

    def can_charge(self, *, user_id: int) -> bool:
        """Whether the customer has what a charge needs (a saved card); a database read only."""


class SimulatedApprove:
    name = "simulated-approve"

    def charge(self, *, attempt_id: int, user_id: int, amount_micros: int) -> ChargeResult:
        return ChargeResult(approved=True, reference=f"sim-{attempt_id}")

    def can_charge(self, *, user_id: int) -> bool:
        return True


class SimulatedDecline:
    name = "simulated-decline"

    def charge(self, *, attempt_id: int, user_id: int, amount_micros: int) -> ChargeResult:
        return ChargeResult(approved=False, decline_reason="card_declined")

    def can_charge(self, *, user_id: int) -> bool:
        return True


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


def can_charge(user_id: int) -> bool:
    """Whether the configured backend could charge this customer now (a backend without the
    method, e.g. a test double, can always)."""
    backend = get_backend()
    check = getattr(backend, "can_charge", None)
    return True if check is None else bool(check(user_id=user_id))


def top_up_amount(*, configured_micros: int, price_micros: int, balance_micros: int) -> int:
    """SPEC M4: the larger of the configured amount and the shortfall for the due renewal,
    rounded up to whole dollars — a $120 renewal with $15 left and a $20 setting charges $105."""
    wanted = max(configured_micros, price_micros - balance_micros, 1)
    return -(-wanted // MICROS_PER_DOLLAR) * MICROS_PER_DOLLAR


# A processor's decline codes in plain words (SPEC M1, M4: the decline reason "in plain words").
# One list for the card payments' messages, the past-due e-mail and the subscription page.
DECLINE_WORDS = {
    "card_declined": "Your card was declined.",
    "generic_decline": "Your card was declined.",
    "insufficient_funds": "Your card has insufficient funds.",
    "expired_card": "Your card has expired.",
    "incorrect_cvc": "The card's security code is incorrect.",
    "incorrect_number": "The card number is incorrect.",
    "lost_card": "Your card was declined (reported lost).",
    "stolen_card": "Your card was declined (reported stolen).",
    "do_not_honor": "Your bank declined the payment.",
    "processing_error": "The card could not be processed. Try again in a moment.",
    "payment_intent_authentication_failure": "The card's authentication was not completed.",
    "authentication_required": "Your bank asks you to authenticate this payment.",
    "no_payment_method": "There is no saved card to charge.",
}


def decline_words(code: str) -> str:
    return DECLINE_WORDS.get(code, "Your card was declined.")
