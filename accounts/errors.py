from codingplans.errors import DomainError, NotFound


class EmailTaken(DomainError):
    code = "email_taken"
    status = 409
    default_message = "An account with this e-mail address already exists."


class InvalidEmail(DomainError):
    code = "invalid_email"
    status = 400
    default_message = "Enter a valid e-mail address."


class TokenNotFound(NotFound):
    default_message = "No such API token."


class EmailUnverified(DomainError):
    """SPEC A2: an unverified customer may browse but not buy a plan or add credits."""

    code = "email_unverified"
    status = 403
    default_message = (
        "Confirm your e-mail address first: open the link we sent you. You can ask for a new "
        "link on your account page."
    )


class EmailUnchanged(DomainError):
    code = "email_unchanged"
    status = 400
    default_message = "That is already your e-mail address."


class WrongPassword(DomainError):
    code = "wrong_password"
    status = 400
    default_message = "That password is not correct."
