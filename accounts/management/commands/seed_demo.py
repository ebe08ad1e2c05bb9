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
            "validated against a temporary stand-in MiniMax server).",
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
        from standins.minimax import StandinServer

        empty = [
            plan
            for plan in all_plans()
            if not Credential.objects.filter(plan_id=plan.plan_id).exists()
        ]
        if not empty:
            return
        configured = settings.MINIMAX_API_BASE_URL
        with StandinServer() as standin:
            settings.MINIMAX_API_BASE_URL = standin.url
            try:
                for plan in empty:
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
                settings.MINIMAX_API_BASE_URL = configured
