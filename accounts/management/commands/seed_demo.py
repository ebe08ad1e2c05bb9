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

    def add_arguments(self, parser):
        parser.add_argument(
            "--with-inventory",
            action="store_true",
            help="Also stock 5 demo credentials per plan that has none (through the real upload, "
            "validated against a temporary stand-in of the plan's provider).",
        )

    def handle(self, *args, with_inventory=False, **options):
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
        if with_inventory:
            self._stock(now)
        self.stdout.write(
            "Demo users:\n"
            f"  customer  demo@example.com / {DEMO_PASSWORD}  ($100.00 credits)\n"
            f"  staff     staff@example.com / {STAFF_PASSWORD}  (admin at /admin/)"
        )

    def _stock(self, now) -> None:
        from django.conf import settings

        from catalog import all_plans
        from inventory.models import Credential
        from inventory.upload import upload_credentials
        from standins import server_class
        from upstream.providers import registry

        empty = [
            plan
            for plan in all_plans()
            if not Credential.objects.filter(plan_id=plan.plan_id).exists()
        ]
        for provider in registry.all_providers():
            plans = [plan for plan in empty if plan.provider_id == provider.provider_id]
            server = server_class(provider.provider_id)
            if not plans or server is None:
                continue
            # Each provider's demo keys are validated by a temporary stand-in of its own.
            configured = getattr(settings, provider.base_url_setting)
            with server() as standin:
                setattr(settings, provider.base_url_setting, standin.api_url)
                try:
                    for plan in plans:
                        text = "\n".join(
                            f"sk-demo-{plan.plan_id}-{n}-{now:%Y%m%d%H%M%S}::demo-{plan.plan_id}-{n}"
                            for n in range(1, 6)
                        )
                        report = upload_credentials(
                            plan_id=plan.plan_id, text=text, actor="system:seed", now=now
                        )
                        self.stdout.write(
                            f"Stocked {report.stored} demo credential(s) for {plan.plan_id}."
                        )
                finally:
                    setattr(settings, provider.base_url_setting, configured)
