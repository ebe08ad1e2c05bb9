from codingplans.errors import DomainError, NotFound


class EmailTaken(DomainError):
    code = "email_taken"
    status = 409
    default_message = "An account with this e-mail address already exists."


class TokenNotFound(NotFound):
    default_message = "No such API token."
