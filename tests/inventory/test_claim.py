"""Where the claim looks first (issue 20) never changes what it may hand out (SPEC I4, P4 step 3,
P5 `sold_out`).

The claim looks above the last credential this process claimed for the plan, and below it only
when nothing is free above. These tests hold that the mark is a hint: whatever it says, a claim
finds an available credential while one exists, a credential freed below the mark is still
sold, `sold_out` means no credential is available, and a purchase that is refused, or replays a
stored outcome, claims nothing.
"""

from __future__ import annotations

import pytest
from django.db import connection, transaction
from django.utils import timezone

from billing.errors import InsufficientCredits
from codingplans import crypto, sql
from inventory import services as inventory
from inventory.models import Credential
from subscriptions import errors
from subscriptions.purchase import purchase_plan

PLUS = "minimax-token-plan-plus"
MAX = "minimax-token-plan-max"


def _claim(user) -> int | None:
    with transaction.atomic():
        claimed = inventory.claim_credential(plan_id=PLUS, user=user, now=timezone.now())
    return None if claimed is None else claimed.id


def _available() -> list[int]:
    return sorted(
        Credential.objects.filter(plan_id=PLUS, state=Credential.State.AVAILABLE).values_list(
            "id", flat=True
        )
    )


@pytest.mark.django_db
def test_a_credential_freed_below_the_mark_is_still_sold_and_then_the_plan_is_sold_out(
    stock, make_user
):
    stock(PLUS, 3)
    low, middle, high = _available()
    user = make_user()
    inventory._claimed_mark.pop(PLUS, None)
    assert _claim(user) == low
    assert _claim(user) == middle  # the mark is now `middle`
    # `low` comes back (a purchase that rolled back after its claim, a key re-tested healthy).
    Credential.objects.filter(pk=low).update(state=Credential.State.AVAILABLE)
    assert _claim(user) == high  # above the mark first
    assert _claim(user) == low  # then below it: nothing available is left behind
    assert _claim(user) is None
    assert _available() == []


@pytest.mark.django_db
@pytest.mark.parametrize("where", ["unset", "zero", "below_all", "middle", "above_all"])
def test_whatever_the_mark_says_every_available_credential_is_claimed_once(stock, make_user, where):
    stock(PLUS, 4)
    stock(MAX, 1)  # another plan's stock is never taken
    ids = _available()
    inventory._claimed_mark.pop(PLUS, None)
    marks = {"zero": 0, "below_all": ids[0] - 1, "middle": ids[1], "above_all": ids[-1] + 1000}
    if where in marks:
        inventory._claimed_mark[PLUS] = marks[where]
    user = make_user()
    claimed = [_claim(user) for _ in range(len(ids))]
    assert sorted(claimed) == ids
    assert _claim(user) is None
    assert Credential.objects.filter(plan_id=MAX, state=Credential.State.AVAILABLE).count() == 1


@pytest.mark.django_db
def test_a_refused_purchase_claims_nothing_although_stock_exists(stock, make_user):
    # SPEC P3/P5: the checks and the claim are one statement; a refusal must leave the stock.
    stock(PLUS, 2)
    poor = make_user(credits_usd=10)
    with pytest.raises(InsufficientCredits):
        purchase_plan(user=poor, plan_id=PLUS, idempotency_key="k", now=timezone.now())
    assert len(_available()) == 2


@pytest.mark.django_db
def test_a_replayed_purchase_claims_nothing(stock, make_user):
    # SPEC P3: the stored outcome is returned; no second credential leaves the stock.
    stock(PLUS, 2)
    user = make_user(credits_usd=40)
    first = purchase_plan(user=user, plan_id=PLUS, idempotency_key="k", now=timezone.now())
    again = purchase_plan(user=user, plan_id=PLUS, idempotency_key="k", now=timezone.now())
    assert (first.replayed, again.replayed) == (False, True)
    assert again.body == first.body
    assert len(_available()) == 1
    with pytest.raises(errors.SubscriptionExists):
        purchase_plan(user=user, plan_id=PLUS, idempotency_key="k2", now=timezone.now())
    assert len(_available()) == 1


@pytest.mark.django_db
@pytest.mark.skipif(not sql.PREPARE, reason="CODING_PLANS_PREPARED_STATEMENTS=0: nothing prepared")
def test_the_checks_and_claim_statement_keeps_one_plan_when_the_stock_is_large(make_user):
    # Issue 20: with the count's bound as a parameter, PostgreSQL guessed a tenth of the stock
    # for it, found its generic plan dearer than planning afresh, and planned the statement at
    # every purchase once a plan had thousands of credentials (0.3 ms each, more than running
    # it). The bound is a literal now; the server keeps the one generic plan.
    blob = crypto.encrypt("sk-claim-plan-test-key-0001")
    with connection.cursor() as cursor:
        cursor.execute(
            f"""INSERT INTO {sql.table(Credential)} (plan_id, state, encrypted_key, fingerprint,
                    upstream_plan_id, holder_ref, created_at, revocation_attempts, failure_note,
                    health_note)
                SELECT %s, 'available', %s, 'claim-plan-' || g, 'up', '', now(), 0, '', ''
                FROM generate_series(1, 20000) AS g""",
            [PLUS, blob],
        )
        cursor.execute(f"ANALYZE {sql.table(Credential)}")
    for i in range(10):
        buyer = make_user(credits_usd=20)
        purchase_plan(user=buyer, plan_id=PLUS, idempotency_key=f"k{i}", now=timezone.now())
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
            " WHERE statement LIKE %s",
            ["%WITH state AS MATERIALIZED%"],
        )
        ((generic, custom),) = cursor.fetchall()
    # PostgreSQL plans a prepared statement's first five runs for their values, then keeps
    # the generic plan unless it looks dearer.
    assert custom <= 5
    assert generic >= 3
