"""Purchase, subscription and lifecycle errors, with the codes and statuses of SPEC P5 and 11.1."""

from __future__ import annotations

from codingplans.errors import DomainError, NotFound


class IdempotencyKeyMissing(DomainError):
    code = "idempotency_key_missing"
    status = 400
    default_message = (
        "Every purchase needs an Idempotency-Key header (any unique string, e.g. a UUID), so a "
        "retry can never charge you twice."
    )


class PlanNotFound(NotFound):
    code = "plan_not_found"
    default_message = "There is no plan with this id."


class IdempotencyKeyReused(DomainError):
    code = "idempotency_key_reused"
    status = 422
    default_message = (
        "This Idempotency-Key was already used for a different plan. Use a new key for a new "
        "purchase."
    )


class SubscriptionExists(DomainError):
    code = "subscription_exists"
    status = 409
    default_message = (
        "You already have a live subscription for this provider. Cancel it and wait until its "
        "access ends before buying another plan."
    )


class ProviderSlotOccupied(DomainError):
    code = "provider_slot_occupied"
    status = 409
    default_message = (
        "You already have your own key for this provider in BYOK. Delete it on the BYOK page "
        "first; the plan installs its own key there."
    )

    @classmethod
    def for_provider(cls, provider_name: str) -> ProviderSlotOccupied:
        """P5: tells the user to delete their own key for the plan's provider first."""
        return cls(
            f"You already have your own {provider_name} key in BYOK. Delete it on the BYOK page "
            f"first; the plan installs its own {provider_name} key there."
        )


class SoldOut(DomainError):
    code = "sold_out"
    status = 409
    default_message = (
        "This plan is sold out right now. Nothing was charged. Use \u201cNotify me when "
        "available\u201d to get an e-mail when it is back."
    )


class SubscriptionNotFound(NotFound):
    default_message = "No such subscription."


class InvalidCursor(DomainError):
    code = "invalid_cursor"
    status = 400
    default_message = "The cursor is not valid; start again without it."


class AccountInactive(DomainError):
    code = "account_inactive"
    status = 403
    default_message = "This account is no longer active."


class SubscriptionNotLive(DomainError):
    code = "subscription_not_live"
    status = 409
    default_message = "This subscription has ended; there is nothing to change."


class AlreadyCanceled(DomainError):
    code = "already_canceled"
    status = 409
    default_message = "Subscription is already canceled; nothing was changed."


class ResumeTooLate(DomainError):
    code = "subscription_not_resumable"
    status = 409
    default_message = (
        "The paid period has already ended, so the cancellation can no longer be undone."
    )


class NoStockForReplacement(DomainError):
    code = "sold_out"
    status = 409
    default_message = (
        "There is no available credential for this plan to replace the subscription's key; "
        "staff were told. Replacement runs when stock arrives."
    )
