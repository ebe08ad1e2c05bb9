"""Re-encrypt every stored secret under the newest key (runbook: key rotation).

Step 1 puts a new Fernet key first in CODING_PLANS_ENCRYPTION_KEYS (old ones stay, so reads keep
working); step 2 is this; step 3 removes the old key. Each row is rewritten under its own row
lock in small transactions, so the app keeps running during a rotation.
"""

from __future__ import annotations

from datetime import datetime

from django.db import transaction

from adminops.audit import record_event
from byok.models import ByokKey
from codingplans import crypto
from inventory.models import Credential, InventoryUpload

TARGETS = (
    (ByokKey, "encrypted_key"),
    (Credential, "encrypted_key"),
    (InventoryUpload, "encrypted_payload"),
)


def rotate_encryption_keys(*, actor: str, now: datetime, batch_size: int = 500) -> dict[str, int]:
    counts: dict[str, int] = {}
    for model, field in TARGETS:
        label = model._meta.label_lower
        counts[label] = 0
        last_id = 0
        while True:
            with transaction.atomic(durable=True):
                rows = list(
                    model.objects.select_for_update()
                    .filter(pk__gt=last_id)
                    .exclude(**{field: ""})
                    .order_by("pk")[:batch_size]
                )
                if not rows:
                    break
                for row in rows:
                    setattr(row, field, crypto.rotate(getattr(row, field)))
                model.objects.bulk_update(rows, [field])
                last_id = rows[-1].pk
                counts[label] += len(rows)
    with transaction.atomic(durable=True):
        record_event(
            actor=actor,
            subject=("codingplans.encryption", "keys"),
            event_type="encryption.rotated",
            now=now,
            new=counts,
        )
    return counts
