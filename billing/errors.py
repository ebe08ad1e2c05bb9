from codingplans.errors import DomainError


class InsufficientCredits(DomainError):
    code = "insufficient_credits"
    status = 402
    default_message = "Your credit balance is too low for this charge. Add credits and try again."


class InvalidCreditAmount(DomainError):
    code = "invalid_amount"
    status = 400
    default_message = "The amount must be a positive USD amount with at most two decimals."


class AutoTopUpUnavailable(DomainError):
    code = "auto_top_up_unavailable"
    status = 409
    default_message = (
        "Automatic top-up is not available: no payment processor is configured. Add credits "
        "before a renewal is due instead."
    )


class AutoTopUpNeedsCard(DomainError):
    code = "no_payment_method"
    status = 409
    default_message = (
        "Automatic top-up charges your saved card, and there is none. Add credits by card with "
        "“Save this card for automatic top-up” ticked, then turn automatic top-up on."
    )


class AdjustmentTooLarge(DomainError):
    code = "adjustment_exceeds_balance"
    status = 409
    default_message = "A removal cannot take the balance below zero."


class ReasonRequired(DomainError):
    code = "reason_required"
    status = 400
    default_message = "Give a reason; it is kept in the ledger and the audit trail."
