"""Stock alerts (SPEC I7, O3) and key rotation."""

import pytest
from cryptography.fernet import Fernet
from django.core import mail
from django.core.management import call_command
from django.utils import timezone

from adminops.models import AuditEvent
from billing.models import CreditAccount
from byok.models import ByokKey
from byok.services import add_key
from codingplans import crypto
from codingplans.crypto import SecretUnavailable
from inventory.alerts import check_low_stock, send_daily_report, send_low_stock_email
from inventory.models import Credential, LowStockAlert
from subscriptions.models import Subscription
from subscriptions.purchase import purchase_plan
from tests.operations import mail_probe

PLUS = "minimax-token-plan-plus"  # low-stock threshold 5 (settings.CODING_PLANS_CATALOG)
THRESHOLD = 5

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
    assert "5 credential(s) left" in low[0].subject  # at the threshold: low (is_low_stock)
    # A restock above the threshold re-arms; the next crossing alerts again.
    stock("minimax-token-plan-plus", 5)  # 2 + 5 = 7
    for i in range(2):
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


def _low_stock_mails() -> list:
    return [m for m in mail.outbox if m.subject.startswith("Low stock")]


@pytest.mark.parametrize("left", [THRESHOLD - 1, THRESHOLD, THRESHOLD + 1])
def test_low_stock_email_boundary(left, make_user, stock):
    # SPEC O3, I7 (issue 13 item 6): an assignment that leaves the plan at or below its
    # threshold sends the e-mail -- at the threshold too, where the admin already warns.
    make_user("ops@example.com", is_staff=True)
    stock(PLUS, left + 1)
    mail.outbox.clear()
    purchase_plan(
        user=make_user(credits_usd=20), plan_id=PLUS, idempotency_key="k", now=timezone.now()
    )
    low = _low_stock_mails()
    if left <= THRESHOLD:
        assert len(low) == 1 and f"{left} credential(s) left" in low[0].subject
    else:
        assert low == []


@pytest.mark.parametrize("available", [THRESHOLD - 1, THRESHOLD, THRESHOLD + 1])
def test_daily_report_low_marker_boundary(available, make_user, stock):
    # SPEC O3, I7 (issue 13 item 6): the report marks LOW exactly where the admin warns.
    make_user("ops@example.com", is_staff=True)
    stock(PLUS, available)
    mail.outbox.clear()
    send_daily_report(now=timezone.now())
    line = next(line for line in mail.outbox[0].body.splitlines() if line.startswith(PLUS))
    assert line.split()[1] == str(available)
    assert line.endswith("LOW") == (available <= THRESHOLD)


@pytest.fixture
def probe(settings):
    settings.EMAIL_BACKEND = "tests.operations.mail_probe.ProbeBackend"
    mail_probe.observations.clear()
    mail_probe.lock_probes.clear()
    yield mail_probe
    mail_probe.lock_probes.clear()


def test_low_stock_email_is_sent_after_commit_with_no_lock_held(make_user, stock, probe):
    # SPEC O3; DESIGN: side effects that leave the database run after commit and hold no lock
    # (issue 13 item 7: a slow mail server held the alert's lock inside the transaction).
    make_user("ops@example.com", is_staff=True)
    stock(PLUS, THRESHOLD + 1)
    buyer = make_user(credits_usd=20)
    account_id = CreditAccount.objects.get(user=buyer).pk
    probe.lock_probes.extend(
        [
            f"SELECT 1 FROM inventory_lowstockalert WHERE plan_id = '{PLUS}'",
            f"SELECT 1 FROM billing_creditaccount WHERE id = {account_id}",
            "SELECT 1 FROM inventory_credential WHERE state = 'assigned'",
        ]
    )
    purchase_plan(user=buyer, plan_id=PLUS, idempotency_key="k", now=timezone.now())
    sent = [o for o in probe.observations if o["subjects"][0].startswith("Low stock")]
    assert len(sent) == 1
    assert sent[0]["in_transaction"] is False
    assert sent[0]["lockable"] == dict.fromkeys(probe.lock_probes, True)
    # Idempotent: the same alert's e-mail is not sent again by a repeated task.
    alert = LowStockAlert.objects.get(plan_id=PLUS)
    assert alert.emailed_at is not None
    assert send_low_stock_email(plan_id=PLUS, alerted_at=alert.alerted_at) is False
    assert check_low_stock(plan_id=PLUS, now=timezone.now()) is False
    assert len(_low_stock_mails()) == 1


def test_rolled_back_purchase_sends_no_low_stock_email(make_user, stock, probe):
    # SPEC P4, O3 (issue 13 item 7): a purchase that fails after claiming the credential that
    # would take the plan to its threshold commits nothing, so no alert and no e-mail.
    make_user("ops@example.com", is_staff=True)
    stock(PLUS, THRESHOLD + 1)
    first = Credential.objects.filter(plan_id=PLUS).order_by("id").first()
    Credential.objects.filter(pk=first.pk).update(encrypted_key="not-a-fernet-token")
    mail.outbox.clear()
    with pytest.raises(SecretUnavailable):
        purchase_plan(
            user=make_user(credits_usd=20), plan_id=PLUS, idempotency_key="k", now=timezone.now()
        )
    assert not Subscription.objects.exists()
    assert Credential.objects.filter(plan_id=PLUS, state="available").count() == THRESHOLD + 1
    assert _low_stock_mails() == [] and probe.observations == []
    assert not LowStockAlert.objects.filter(alerted_at__isnull=False).exists()
    assert not AuditEvent.objects.filter(event_type="inventory.low_stock").exists()
