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
