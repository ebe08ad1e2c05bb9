"""Stock alerts (SPEC I7, O3) and key rotation."""

import pytest
from cryptography.fernet import Fernet
from django.core import mail
from django.core.management import call_command
from django.utils import timezone

from byok.models import ByokKey
from byok.services import add_key
from codingplans import crypto
from inventory.alerts import send_daily_report
from inventory.models import Credential
from subscriptions.services import purchase_plan

pytestmark = pytest.mark.django_db(transaction=True)


def test_ten_purchases_crossing_threshold_send_exactly_one_email(make_user, stock, settings):
    # SPEC O3: threshold 5 for Plus; 12 in stock, 10 purchases cross it once.
    make_user("ops@example.com", is_staff=True)
    stock("minimax-token-plan-plus", 12)
    mail.outbox.clear()
    for i in range(10):
        user = make_user(credits_usd=20)
        purchase_plan(
            user=user,
            plan_id="minimax-token-plan-plus",
            idempotency_key=f"k{i}",
            now=timezone.now(),
        )
    low = [m for m in mail.outbox if m.subject.startswith("Low stock")]
    assert len(low) == 1 and low[0].to == ["ops@example.com"]
    assert "4 credential(s) left" in low[0].subject
    # A restock above the threshold re-arms; the next crossing alerts again.
    stock("minimax-token-plan-plus", 5)
    for i in range(3):
        user = make_user(credits_usd=20)
        purchase_plan(
            user=user,
            plan_id="minimax-token-plan-plus",
            idempotency_key=f"r{i}",
            now=timezone.now(),
        )
    assert len([m for m in mail.outbox if m.subject.startswith("Low stock")]) == 2


def test_daily_report_has_counts_and_backlog(make_user, stock):
    make_user("ops@example.com", is_staff=True)
    stock("minimax-token-plan-max", 3)
    mail.outbox.clear()
    assert send_daily_report(now=timezone.now()) == 1
    body = mail.outbox[0].body
    assert "minimax-token-plan-max" in body and "Revocation backlog: 0" in body
    line = next(line for line in body.splitlines() if line.startswith("minimax-token-plan-max"))
    assert line.split()[1] == "3"


def test_rotate_encryption_keys_reencrypts_under_the_new_key(customer, stock, settings):
    stock("minimax-token-plan-plus", 2)
    add_key(
        user=customer, provider_id="minimax", api_key="sk-own-rotate-12345678", now=timezone.now()
    )
    old = settings.CODING_PLANS_ENCRYPTION_KEYS
    new_key = Fernet.generate_key().decode()
    settings.CODING_PLANS_ENCRYPTION_KEYS = [new_key, *old]
    call_command("rotate_encryption_keys")
    settings.CODING_PLANS_ENCRYPTION_KEYS = [new_key]  # the old key is retired
    assert crypto.decrypt(ByokKey.objects.get().encrypted_key) == "sk-own-rotate-12345678"
    assert all(
        crypto.decrypt(c.encrypted_key).startswith("sk-stock-") for c in Credential.objects.all()
    )
