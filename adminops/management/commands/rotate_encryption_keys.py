import json

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from adminops.keyrotation import rotate_encryption_keys
from codingplans.crypto import SecretUnavailable


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored secret under the first key of CODING_PLANS_ENCRYPTION_KEYS. "
        "Run after adding a new key first; retire the old key only after this succeeds."
    )

    def handle(self, *args, **options):
        try:
            counts = rotate_encryption_keys(actor="system:command", now=timezone.now())
        except SecretUnavailable:
            raise CommandError(
                "A stored secret cannot be decrypted with the configured keys; keep every old key "
                "in CODING_PLANS_ENCRYPTION_KEYS until rotation succeeds."
            ) from None
        self.stdout.write(json.dumps({"reencrypted": counts}))
