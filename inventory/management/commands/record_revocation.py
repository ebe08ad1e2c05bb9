from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from codingplans.errors import DomainError
from inventory.models import Credential
from inventory.services import record_revocation_outcome


class Command(BaseCommand):
    help = (
        "Record the outcome of deprovisioning a credential at its provider (SPEC R2): --revoked, "
        "or "
        "--failed NOTE (the note is stored sanitized, at most 500 characters)."
    )

    def add_arguments(self, parser):
        parser.add_argument("item_id", help="The credential id from `revocation_queue`.")
        outcome = parser.add_mutually_exclusive_group(required=True)
        outcome.add_argument("--revoked", action="store_true")
        outcome.add_argument("--failed", metavar="NOTE")

    def handle(self, *args, item_id, revoked, failed, **options):
        if revoked:
            state, note = Credential.State.REVOKED, ""
        else:
            state, note = Credential.State.REVOCATION_FAILED, failed
        try:
            credential = record_revocation_outcome(
                credential_id=item_id,
                outcome=state,
                note=note,
                actor="system:command",
                now=timezone.now(),
            )
        except DomainError as exc:
            raise CommandError(f"{exc.message} ({exc.code})") from None
        self.stdout.write(
            f"Credential #{credential.pk} is now {credential.state} "
            f"(attempt {credential.revocation_attempts})."
        )
