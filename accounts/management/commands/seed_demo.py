"""Demo data for `make dev`: a customer with $100 credits and a staff user, passwords printed."""

from django.core.management.base import BaseCommand
from django.utils import timezone

from accounts.models import User
from accounts.services import create_user
from billing.services import grant_credits

DEMO_PASSWORD = "demo-password-123"
STAFF_PASSWORD = "staff-password-123"


class Command(BaseCommand):
    help = "Create the demo customer and staff user if missing (idempotent)."

    def handle(self, *args, **options):
        now = timezone.now()
        customer = User.objects.filter(email="demo@example.com").first()
        if customer is None:
            customer = create_user(
                email="demo@example.com",
                password=DEMO_PASSWORD,
                full_name="Demo Customer",
                now=now,
                actor="system:seed",
            )
            grant_credits(
                user=customer,
                amount_micros=100_000_000,
                actor="system:seed",
                reason="Demo credits",
                now=now,
            )
        if not User.objects.filter(email="staff@example.com").exists():
            create_user(
                email="staff@example.com",
                password=STAFF_PASSWORD,
                full_name="Demo Staff",
                is_staff=True,
                is_superuser=True,
                now=now,
                actor="system:seed",
            )
        self.stdout.write(
            "Demo users:\n"
            f"  customer  demo@example.com / {DEMO_PASSWORD}  ($100.00 credits)\n"
            f"  staff     staff@example.com / {STAFF_PASSWORD}  (admin at /admin/)"
        )
