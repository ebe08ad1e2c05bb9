from codingplans.errors import DomainError


class UnknownPlan(DomainError):
    code = "plan_not_found"
    status = 404
    default_message = "There is no plan with this id."


class UploadRejected(DomainError):
    code = "upload_rejected"
    status = 400
    default_message = "The upload was rejected; nothing was stored."
