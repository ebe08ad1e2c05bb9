from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from accounts.models import User
from adminops.audit import actor_for
from billing.services import grant_credits
from codingplans.errors import DomainError
from codingplans.money import InvalidAmount, display_usd, usd_to_micros


class Command(BaseCommand):
    help = (
        "Grant credits to a user: a ledger entry, not a bare balance edit (SPEC 11.2). "
        "--actor names the staff member recorded as the actor (SPEC M6)."
    )

    def add_arguments(self, parser):
        parser.add_argument("email")
        parser.add_argument("amount_usd")
        parser.add_argument("--reason", default="Operator grant")
        parser.add_argument(
            "--actor",
            default=None,
            help="E-mail of the staff member granting (recorded); default system:command.",
        )

    def handle(self, *args, email, amount_usd, reason, actor, **options):
        user = User.objects.filter(email__iexact=email, is_active=True).first()
        if user is None:
            raise CommandError(f"No active user with e-mail {email}.")
        recorded = "system:command"
        if actor is not None:
            staff = User.objects.filter(email__iexact=actor.strip(), is_active=True).first()
            if staff is None:
                raise CommandError(f"--actor {actor}: no active user with that e-mail.")
            if not staff.is_staff:
                raise CommandError(f"--actor {actor}: not a staff member.")
            recorded = actor_for(staff)
        try:
            micros = usd_to_micros(amount_usd)
            entry = grant_credits(
                user=user,
                amount_micros=micros,
                actor=recorded,
                reason=reason,
                now=timezone.now(),
            )
        except (InvalidAmount, DomainError) as exc:
            raise CommandError(
                f"Invalid amount {amount_usd!r}: give a positive USD amount with at most two "
                "decimals, up to 1000000."
            ) from exc
        balance = display_usd(entry.balance_after_micros)
        self.stdout.write(f"Granted {display_usd(micros)} to {user.email}; balance {balance}.")
