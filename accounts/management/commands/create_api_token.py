from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from accounts.models import User
from accounts.tokens import create_api_token


class Command(BaseCommand):
    help = "Create a personal API token for a user; prints only the token (SPEC 11.2)."

    def add_arguments(self, parser):
        parser.add_argument("email")
        parser.add_argument("--name", default="API token")

    def handle(self, *args, email, name, **options):
        user = User.objects.filter(email__iexact=email, is_active=True).first()
        if user is None:
            raise CommandError(f"No active user with e-mail {email}.")
        issued = create_api_token(user=user, name=name, now=timezone.now(), actor="system:command")
        self.stdout.write(issued.plaintext)
