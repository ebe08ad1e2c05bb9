from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from codingplans.errors import DomainError
from subscriptions.actions import terminate_subscription


class Command(BaseCommand):
    help = (
        "End a subscription now (SPEC L6): installed entry removed if unchanged, credential "
        "queued for revocation."
    )

    def add_arguments(self, parser):
        parser.add_argument("subscription_id", type=int)

    def handle(self, *args, subscription_id, **options):
        try:
            subscription = terminate_subscription(
                subscription_id=subscription_id, actor="system:command", now=timezone.now()
            )
        except DomainError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(
            f"Subscription {subscription.pk} terminated (administrative_termination); "
            "credential queued for revocation."
        )
