"""Card payments' domain errors, each with the stable code of SPEC 11.1."""

from codingplans.errors import DomainError, NotFound


class InvalidPaymentAmount(DomainError):
    code = "invalid_amount"
    status = 400
    default_message = (
        "Enter an amount in US dollars between $5.00 and $1,000.00, in whole cents (e.g. 25.00)."
    )


class CardDeclined(DomainError):
    code = "card_declined"
    status = 402
    default_message = "Your card was declined. No money was taken; try another card."


class PaymentsUnavailable(DomainError):
    code = "payments_unavailable"
    status = 409
    default_message = "Card payments are not available on this installation."


class NoPaymentMethod(DomainError):
    code = "no_payment_method"
    status = 409
    default_message = "There is no saved card. Enter a card to pay with."


class InvalidPaymentMethod(DomainError):
    code = "invalid_payment_method"
    status = 400
    default_message = "That card cannot be used. Enter the card again."


class PaymentProcessorError(DomainError):
    code = "payment_processor_error"
    status = 502
    default_message = (
        "The card processor could not be reached. If money was taken, the credits arrive "
        "on their own within minutes; otherwise try again."
    )


class InvalidSignature(DomainError):
    code = "invalid_signature"
    status = 400
    default_message = "The webhook signature is missing, invalid or too old."


class PaymentNotFound(NotFound):
    default_message = "No such card payment."


class InvalidCursor(DomainError):
    code = "invalid_cursor"
    status = 400
    default_message = "The cursor is not valid; start again without it."


class RefundReasonRequired(DomainError):
    code = "reason_required"
    status = 400
    default_message = "Give a reason for the refund; it is kept in the ledger and the audit trail."


class InvalidRefundAmount(DomainError):
    code = "invalid_amount"
    status = 400
    default_message = "Enter a positive amount in US dollars, in whole cents."


class PaymentNotRefundable(DomainError):
    code = "payment_not_refundable"
    status = 409
    default_message = "Only a succeeded card payment can be refunded."


class RefundExceedsPayment(DomainError):
    code = "refund_exceeds_payment"
    status = 409
    default_message = "The refund is larger than what is left unrefunded of this payment."


class RefundExceedsBalance(DomainError):
    code = "refund_exceeds_balance"
    status = 409
    default_message = (
        "The refund is larger than the customer's balance: credits already spent are not refunded."
    )
