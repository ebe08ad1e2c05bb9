from codingplans.errors import DomainError


class UnknownPlan(DomainError):
    code = "plan_not_found"
    status = 404
    default_message = "There is no plan with this id."


class UploadRejected(DomainError):
    code = "upload_rejected"
    status = 400
    default_message = "The upload was rejected; nothing was stored."


class RevocationItemNotFound(DomainError):
    code = "not_found"
    status = 404
    default_message = "There is no credential with this id."


class InvalidRevocationState(DomainError):
    code = "invalid_state"
    status = 409
    default_message = (
        "Only credentials in revocation_pending or revocation_failed can take a revocation "
        "outcome; revoked is final."
    )


class InvalidRevocationOutcome(DomainError):
    code = "invalid_outcome"
    status = 400
    default_message = "The outcome must be revoked or revocation_failed."


class RevocationNoteRequired(DomainError):
    code = "note_required"
    status = 400
    default_message = "A failed revocation needs a note saying what went wrong."


class UploadNotFound(DomainError):
    code = "not_found"
    status = 404
    default_message = "There is no upload with this id."


class UploadExpired(DomainError):
    code = "upload_expired"
    status = 409
    default_message = (
        "This upload waited more than 24 hours without being processed, so its pasted "
        "credentials were erased and it can no longer be stored. Upload the file again."
    )


class CredentialNotFound(DomainError):
    code = "not_found"
    status = 404
    default_message = "There is no credential with this id."


class InvalidCredentialState(DomainError):
    code = "invalid_state"
    status = 409
    default_message = "The credential is not in a state that allows this action."


class RetireNoteRequired(DomainError):
    code = "note_required"
    status = 400
    default_message = "Retiring a credential needs a note saying why."


class HealthRunInProgress(DomainError):
    code = "health_run_in_progress"
    status = 409
    default_message = "Another stock health run is in progress; try again when it has finished."
