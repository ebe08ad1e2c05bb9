from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from accounts.models import User
from accounts.services import delete_account


class Command(BaseCommand):
    help = (
        "Delete an account now (SPEC D1): plans end, keys and intents go, personal data is erased."
    )

    def add_arguments(self, parser):
        parser.add_argument("email")

    def handle(self, *args, email, **options):
        user = User.objects.filter(email__iexact=email, deleted_at__isnull=True).first()
        if user is None:
            raise CommandError(f"No account with e-mail {email}.")
        delete_account(user=user, actor="system:command", now=timezone.now())
        self.stdout.write(f"Account {email} deleted.")
