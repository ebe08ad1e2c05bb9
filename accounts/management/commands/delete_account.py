from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from accounts.models import User
from accounts.services import DeletionChannel, delete_account, deletion_refusal
from adminops.audit import actor_for


class Command(BaseCommand):
    help = (
        "Delete an account now (SPEC D1): plans end, keys and intents go, personal data is erased. "
        "Staff and superuser accounts only with --allow-staff."
    )

    def add_arguments(self, parser):
        parser.add_argument("email")
        parser.add_argument(
            "--allow-staff",
            action="store_true",
            help="also delete a staff or superuser account (refused without it)",
        )
        parser.add_argument(
            "--actor",
            metavar="EMAIL",
            help="the staff member recorded as the actor (default: system:command)",
        )

    def handle(self, *args, email, allow_staff, actor, **options):
        user = User.objects.filter(email__iexact=email, deleted_at__isnull=True).first()
        if user is None:
            raise CommandError(f"No account with e-mail {email}.")
        by = None
        if actor is not None:
            by = User.objects.filter(email__iexact=actor, deleted_at__isnull=True).first()
            if by is None:
                raise CommandError(f"No staff member with e-mail {actor} (--actor).")
        refusal = deletion_refusal(
            target=user, channel=DeletionChannel.COMMAND, by=by, allow_staff=allow_staff
        )
        if refusal is not None:
            raise CommandError(f"Account {email} was not deleted: {refusal}")
        delete_account(
            user=user,
            actor=actor_for(by) if by is not None else "system:command",
            now=timezone.now(),
        )
        self.stdout.write(f"Account {email} deleted.")
