from datetime import timedelta

import pytest
from django.utils import timezone

from billing.models import CreditAccount
from byok.models import ByokKey
from inventory.models import Credential
from subscriptions.models import Subscription
from subscriptions.purchase import purchase_plan
from subscriptions.sweep import run_billing_sweep

pytestmark = pytest.mark.django_db


def test_renew_then_terminate_when_short(customer, stock):
    # SPEC L2, L3
    stock()
    now = timezone.now()
    out = purchase_plan(
        user=customer, plan_id="minimax-token-plan-plus", idempotency_key="a", now=now
    )
    sub = Subscription.objects.get(pk=out.subscription_id)
    end = sub.current_period_end
    run = run_billing_sweep(now=end)
    assert run.counts["renewed"] == 1
    sub.refresh_from_db()
    assert sub.current_period_start == end and sub.current_period_end == end + timedelta(days=30)
    assert run_billing_sweep(now=end).counts["renewed"] == 0  # L8
    assert CreditAccount.objects.get(user=customer).balance_micros == 60_000_000
    # $60 left: three more renewals (a backlog drains in one run), then short.
    t = sub.current_period_end
    run = run_billing_sweep(now=t + timedelta(days=91))
    assert run.counts["renewed"] == 3 and run.counts["terminated"] == 1
    sub.refresh_from_db()
    assert sub.status == "canceled" and sub.cancellation_reason == "insufficient_credits"
    assert not ByokKey.objects.filter(user=customer).exists()
    cred = Credential.objects.get(pk=sub.credential_id)
    assert cred.state == "revocation_pending" and cred.encrypted_key == ""
