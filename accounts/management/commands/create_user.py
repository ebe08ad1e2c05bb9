from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from accounts.services import create_user
from codingplans.errors import DomainError


class Command(BaseCommand):
    help = "Create a user (SPEC 11.2). Without --password the account cannot log in by password."

    def add_arguments(self, parser):
        parser.add_argument("email")
        parser.add_argument("--password")
        parser.add_argument("--staff", action="store_true")
        parser.add_argument("--superuser", action="store_true")

    def handle(self, *args, email, password, staff, superuser, **options):
        try:
            user = create_user(
                email=email,
                password=password,
                is_staff=staff or superuser,
                is_superuser=superuser,
                now=timezone.now(),
                actor="system:command",
            )
        except DomainError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(f"Created user {user.email} (id {user.pk}).")
