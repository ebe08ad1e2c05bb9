"""Canary (SPEC O1, S1, I6): run every kind of state change with key-shaped secrets, then prove that
no API key, encrypted value, fingerprint, token, token hash or password hash appears in any
audit event's values, nor on any admin audit page (list, filters, detail)."""

from __future__ import annotations

import json
import secrets

import pytest
from cryptography.fernet import Fernet
from django.db import transaction
from django.forms.models import model_to_dict
from django.test import Client
from django.utils import timezone

from accounts.models import ApiToken, User
from accounts.services import delete_account
from accounts.tokens import create_api_token, revoke_api_token
from adminops.keyrotation import rotate_encryption_keys
from adminops.models import AuditEvent
from byok.models import ByokKey
from byok.services import add_key, delete_key, update_key
from codingplans import crypto
from inventory import services as inventory
from inventory import upload as inventory_upload
from inventory import upload_jobs
from inventory.models import Credential, InventoryUpload
from subscriptions.actions import cancel_at_period_end, terminate_subscription
from subscriptions.models import Subscription
from subscriptions.purchase import purchase_plan
from subscriptions.sweep import run_billing_sweep

pytestmark = pytest.mark.django_db

CANARY = "sk-canary-audit-"
PLUS, MAX = "minimax-token-plan-plus", "minimax-token-plan-max"
AUDIT_URL = "/admin/adminops/auditevent/"


def canary(label: str) -> str:
    return f"{CANARY}{label}-{secrets.token_hex(8)}"


class Secrets:
    """Everything secret seen at any point while the services ran."""

    def __init__(self):
        self.values: set[str] = set()

    def add(self, *values: str) -> None:
        self.values.update(v for v in values if v)

    def snapshot(self) -> None:
        self.add(*Credential.objects.values_list("encrypted_key", flat=True))
        self.add(*Credential.objects.values_list("fingerprint", flat=True))
        self.add(*ByokKey.objects.values_list("encrypted_key", flat=True))
        self.add(*InventoryUpload.objects.values_list("encrypted_payload", flat=True))
        self.add(*ApiToken.objects.values_list("token_hash", flat=True))
        for password in User.objects.values_list("password", flat=True):
            self.add(password, password.rsplit("$", 1)[-1])


def _plant(make_user, settings, django_capture_on_commit_callbacks) -> Secrets:
    found = Secrets()
    now = timezone.now()
    staff = make_user("ops@example.com", is_staff=True, is_superuser=True)
    operator = Client()
    operator.force_login(staff)

    # Uploads: through the admin (background task run at commit), the command's service, and
    # rejected ones (duplicate, invalid key) whose keys never reach a credential row.
    admin_keys = [canary(f"admin{i}") for i in range(3)]
    command_keys = [canary(f"cmd{i}") for i in range(2)]
    rejected = [canary("dup"), f"invalid-{canary('bad')}"]
    found.add(*admin_keys, *command_keys, *rejected)
    found.add(*(crypto.fingerprint(k) for k in [*admin_keys, *command_keys, *rejected]))
    with django_capture_on_commit_callbacks(execute=True):
        operator.post(
            "/admin/inventory/credential/upload/",
            {
                "plan_id": PLUS,
                "lines": "\n".join(f"{k}::up-a-{i}" for i, k in enumerate(admin_keys)),
            },
        )
    inventory_upload.upload_credentials(
        plan_id=MAX,
        text="\n".join(f"{k}::up-c-{i}" for i, k in enumerate(command_keys)),
        actor="system:command",
        now=now,
    )
    pending = upload_jobs.start_upload(
        plan_id=PLUS,
        text=f"{rejected[0]}::x\n{rejected[1]}::y\n{admin_keys[0]}::z",
        user=staff,
        now=now,
    )
    found.snapshot()  # the pending upload's encrypted payload
    upload_jobs.process_upload(pending.pk, now)
    found.snapshot()

    # Purchases install the plan's key in BYOK; cancellation, termination, the sweep.
    alice, bob, carol = (make_user(credits_usd=100) for _ in range(3))
    first = purchase_plan(user=alice, plan_id=PLUS, idempotency_key="c1", now=now)
    second = purchase_plan(user=bob, plan_id=PLUS, idempotency_key="c2", now=now)
    third = purchase_plan(user=carol, plan_id=MAX, idempotency_key="c3", now=now)
    found.snapshot()
    cancel_at_period_end(user=bob, subscription_id=second.subscription_id, now=now)
    terminate_subscription(
        subscription_id=first.subscription_id, actor=f"staff:{staff.pk}", now=now
    )
    period_end = Subscription.objects.get(pk=second.subscription_id).current_period_end
    run_billing_sweep(now=period_end, trigger="command")

    # A revocation note that carries a key (stored redacted), both outcomes.
    queued = Subscription.objects.get(pk=first.subscription_id).credential_id
    noisy = canary("note")
    found.add(noisy)
    inventory.record_revocation_outcome(
        credential_id=queued,
        outcome="revocation_failed",
        note=f"MiniMax echoed {noisy}",
        actor=f"staff:{staff.pk}",
        now=now,
    )
    inventory.record_revocation_outcome(
        credential_id=queued, outcome="revoked", note="", actor=f"staff:{staff.pk}", now=now
    )
    with transaction.atomic():
        inventory.request_revocation(
            credential=Credential.objects.select_for_update().get(
                pk=Subscription.objects.get(pk=third.subscription_id).credential_id
            ),
            actor="system:test",
            now=now,
        )

    # BYOK: the customer's own keys, replaced, disabled, deleted.
    dave = make_user(credits_usd=5)
    own, replacement = canary("own"), canary("replaced")
    found.add(own, replacement)
    entry = add_key(user=dave, provider_id="minimax", api_key=own, now=now)
    found.snapshot()
    update_key(user=dave, key_id=entry.pk, api_key=replacement, now=now)
    found.snapshot()
    update_key(user=dave, key_id=entry.pk, enabled=False, now=now)

    # Tokens: created, revoked; the plaintext is shown once, never stored.
    issued = create_api_token(user=dave, now=now)
    found.add(issued.plaintext)
    found.snapshot()
    revoke_api_token(user=dave, token_id=issued.token.pk, now=now)

    # Staff change someone's access and password in the admin.
    operator.post(
        f"/admin/accounts/user/{carol.pk}/change/",
        {"full_name": "Carol Canary", "is_active": "on", "is_staff": "on"},
    )
    new_password = canary("password")
    found.add(new_password)
    operator.post(
        f"/admin/accounts/user/{carol.pk}/password/",
        {"password1": new_password, "password2": new_password, "usable_password": "true"},
    )
    found.snapshot()

    # Key rotation re-encrypts everything; both the old and the new ciphertexts are secret.
    settings.CODING_PLANS_ENCRYPTION_KEYS = [
        Fernet.generate_key().decode(),
        *settings.CODING_PLANS_ENCRYPTION_KEYS,
    ]
    rotate_encryption_keys(actor="system:command", now=now)
    found.snapshot()

    delete_key(user=dave, key_id=entry.pk, now=now)
    delete_account(user=carol, actor=f"staff:{staff.pk}", now=now)
    found.snapshot()
    return found


@pytest.fixture
def planted(make_user, settings, django_capture_on_commit_callbacks):
    return _plant(make_user, settings, django_capture_on_commit_callbacks)


def test_no_secret_in_any_audit_event(planted):
    events = list(AuditEvent.objects.all())
    types = {event.event_type for event in events}
    for expected in (
        "inventory.upload_started",
        "inventory.uploaded",
        "inventory.upload_rejected",
        "subscription.purchased",
        "credential.assigned",
        "subscription.ended",
        "credential.revocation_failed",
        "credential.revoked",
        "byok.added",
        "byok.replaced",
        "byok.deleted",
        "api_token.created",
        "user.changed_by_staff",
        "user.password_set_by_staff",
        "encryption.rotated",
        "account.deleted",
    ):
        assert expected in types, expected
    assert len(planted.values) > 40
    for event in events:
        text = json.dumps(model_to_dict(event), default=str)
        assert CANARY not in text, event
        for secret in planted.values:
            assert secret not in text, (event.event_type, secret[:14])


def test_no_secret_on_the_admin_audit_pages(planted, make_user):
    from django.contrib.auth.models import Group

    from adminops.roles import AUDITORS

    auditor = make_user("auditor@example.com", is_staff=True)
    auditor.groups.add(Group.objects.get(name=AUDITORS))
    client = Client()
    client.force_login(auditor)
    urls = [AUDIT_URL, f"{AUDIT_URL}?actor_kind=staff", f"{AUDIT_URL}?q=sk-canary"]
    events = AuditEvent.objects.all()
    pages = -(-events.count() // 100)
    urls += [f"{AUDIT_URL}?p={page}" for page in range(1, pages + 1)]
    for event in events:
        urls.append(f"{AUDIT_URL}{event.pk}/change/")
        urls.append(f"{AUDIT_URL}?subject_type={event.subject_type}&subject_id={event.subject_id}")
        urls.append(f"{AUDIT_URL}?event_type={event.event_type}")
    for url in sorted(set(urls)):
        page = client.get(url)
        assert page.status_code == 200, url
        html = page.content.decode()
        assert CANARY not in html, url
        for secret in planted.values:
            assert secret not in html, (url, secret[:14])
