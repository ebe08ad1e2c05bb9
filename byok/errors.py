from codingplans.errors import DomainError, NotFound


class ProviderSlotOccupied(DomainError):
    code = "provider_slot_occupied"
    status = 409
    default_message = (
        "You already have a key for this provider. Replace or delete it in BYOK instead of adding "
        "another."
    )


class UnknownProvider(DomainError):
    code = "unknown_provider"
    status = 400
    default_message = "This provider is not supported."


class InvalidKey(DomainError):
    code = "invalid_api_key"
    status = 400
    default_message = "The API key must be 8 to 512 printable characters without spaces."


class KeyNotFound(NotFound):
    default_message = "No such BYOK key."
