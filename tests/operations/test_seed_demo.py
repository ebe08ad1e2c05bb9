"""`make dev`'s demo data: users, credits and a little stock for every plan (issue 2)."""

import pytest
from django.core.management import call_command

from billing.models import CreditAccount
from inventory.selectors import counts_by_plan

pytestmark = pytest.mark.django_db


def test_seed_demo_with_inventory_is_idempotent():
    call_command("seed_demo", "--with-inventory")
    call_command("seed_demo", "--with-inventory")
    assert CreditAccount.objects.get(user__email="demo@example.com").balance_micros == 100_000_000
    assert {plan: row["available"] for plan, row in counts_by_plan().items()} == {
        "minimax-token-plan-plus": 5,
        "minimax-token-plan-max": 5,
        "minimax-token-plan-ultra": 5,
        "byteplus-coding-plan-lite": 5,  # SPEC V2: demo stock for every provider
        "byteplus-coding-plan-pro": 5,
    }
