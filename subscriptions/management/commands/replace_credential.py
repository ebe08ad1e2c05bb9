from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from codingplans.errors import DomainError
from subscriptions.errors import NoStockForReplacement
from subscriptions.replacement import alert_staff_no_stock, replace_credential


class Command(BaseCommand):
    help = (
        "Give a live subscription a fresh credential of its plan now (SPEC H3): the installed "
        "entry keeps its id and gets the new key, the old credential is queued for revocation, "
        "no charge. Exits non-zero when there is no stock."
    )

    def add_arguments(self, parser):
        parser.add_argument("subscription_id", type=int)

    def handle(self, *args, subscription_id, **options):
        now = timezone.now()
        try:
            outcome = replace_credential(
                subscription_id=subscription_id, actor="system:command", now=now
            )
        except NoStockForReplacement as exc:
            alert_staff_no_stock(subscription_id=subscription_id, now=now)
            raise CommandError(f"{exc.message} ({exc.code})") from None
        except DomainError as exc:
            raise CommandError(f"{exc.message} ({exc.code})") from None
        self.stdout.write(
            f"Subscription {outcome.subscription_id}: credential #{outcome.old_credential_id} "
            f"replaced by #{outcome.new_credential_id} (old one queued for revocation); "
            + (
                f"installed entry #{outcome.installed_entry_id} re-keyed."
                if outcome.installed_entry_id is not None
                else "no linked installed entry (the customer changed or removed it)."
            )
        )
