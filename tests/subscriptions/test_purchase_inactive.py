"""A purchase that queued behind an account deletion must not succeed (SPEC D1, P4)."""

import pytest
from django.utils import timezone

from accounts.models import User
from subscriptions.errors import AccountInactive
from subscriptions.models import Subscription
from subscriptions.purchase import purchase_plan

pytestmark = pytest.mark.django_db


def test_purchase_for_a_deleted_account_is_refused(customer, stock):
    stock()
    # The request already holds the user object; the deletion committed meanwhile.
    User.objects.filter(pk=customer.pk).update(is_active=False, deleted_at=timezone.now())
    with pytest.raises(AccountInactive):
        purchase_plan(
            user=customer,
            plan_id="minimax-token-plan-plus",
            idempotency_key="x",
            now=timezone.now(),
        )
    assert not Subscription.objects.exists()
