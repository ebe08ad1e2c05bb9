"""The credential list and dashboard (SPEC I6, I7): counts, low stock, upstream plan ids only
for items awaiting revocation, read-only, no secrets, no N+1 queries."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from inventory.models import Credential
from tests.adminops.conftest import CHANGELIST_URL, MAX, PLUS, ULTRA, credential_for

pytestmark = pytest.mark.django_db


def test_dashboard_counts_per_plan_and_state(operator, stock, queue_item):
    # SPEC I7
    stock(PLUS, 2)
    stock(MAX, 6)
    queue_item(MAX)
    html = operator.get(CHANGELIST_URL).content.decode()
    table = html[html.index('id="inventory-dashboard"') :]
    table = table[: table.index("</table>")]
    rows = {
        plan: [int(n) for n in re.findall(r"<td>(\d+)</td>", row)]
        for plan, row in re.findall(r"\((minimax-token-plan-\w+)\)</a></th>(.*?)</tr>", table, re.S)
    }
    # available, assigned, revocation_pending, revoked, revocation_failed, total
    # The states' columns (quarantined last, SPEC H1), then the total.
    assert rows[PLUS] == [2, 0, 0, 0, 0, 0, 2]
    assert rows[MAX] == [6, 0, 1, 0, 0, 0, 7]
    assert rows[ULTRA] == [0, 0, 0, 0, 0, 0, 0]


def test_low_stock_warning_for_plans_at_or_below_threshold(operator, stock):
    # SPEC I7: Plus (threshold 5) at 5 and Ultra (threshold 3) at 0 are low; Max at 6 is not
    stock(PLUS, 5)
    stock(MAX, 6)
    html = operator.get(CHANGELIST_URL).content.decode()
    assert "Low stock: Token Plan Plus (minimax-token-plan-plus) has 5 available" in html
    assert "Low stock: Token Plan Ultra (minimax-token-plan-ultra) has 0 available" in html
    assert "Low stock: Token Plan Max" not in html
    home = operator.get("/admin/").content.decode()
    assert "Low stock: Token Plan Plus" in home and "Low stock: Token Plan Max" not in home
    assert "/admin/inventory/credential/revocation-queue/" in home


@pytest.mark.parametrize("available", [4, 5, 6])
def test_low_stock_warning_boundary(available, operator, stock):
    # SPEC I7 (issue 13 item 6): Plus has threshold 5; the admin warns at or below it, the same
    # predicate (inventory.selectors.is_low_stock) as the e-mail and the daily report.
    stock(PLUS, available)
    for url in (CHANGELIST_URL, "/admin/"):
        html = operator.get(url).content.decode()
        assert ("Low stock: Token Plan Plus" in html) == (available <= 5), url


def test_upstream_plan_id_only_for_items_awaiting_revocation(operator, stock, queue_item):
    # SPEC I6
    (available,) = stock(PLUS, 1)
    pending = queue_item(PLUS)
    failed = queue_item(PLUS)
    Credential.objects.filter(pk=failed.pk).update(state="revocation_failed")
    revoked = queue_item(PLUS)
    Credential.objects.filter(pk=revoked.pk).update(state="revoked")
    html = operator.get(CHANGELIST_URL).content.decode()
    assert pending.upstream_plan_id in html
    assert failed.upstream_plan_id in html
    assert credential_for(available).upstream_plan_id not in html
    assert revoked.upstream_plan_id not in html
    detail = operator.get(f"{CHANGELIST_URL}{credential_for(available).pk}/change/")
    assert detail.status_code == 200
    assert credential_for(available).upstream_plan_id not in detail.content.decode()
    detail = operator.get(f"{CHANGELIST_URL}{pending.pk}/change/").content.decode()
    assert pending.upstream_plan_id in detail


def test_list_and_detail_never_show_key_ciphertext_or_fingerprint(operator, stock):
    (key,) = stock(PLUS, 1)
    credential = credential_for(key)
    for url in (CHANGELIST_URL, f"{CHANGELIST_URL}{credential.pk}/change/"):
        html = operator.get(url).content.decode()
        assert key not in html
        assert credential.encrypted_key not in html
        assert credential.fingerprint not in html
        assert "encrypted_key" not in html and "fingerprint" not in html


def test_filters_by_plan_and_state(operator, stock, queue_item):
    stock(PLUS, 1)
    stock(MAX, 2)
    queue_item(MAX)
    page = operator.get(CHANGELIST_URL, {"plan_id": MAX, "state": "available"})
    assert page.status_code == 200
    assert page.context["cl"].result_count == 2
    assert operator.get(CHANGELIST_URL, {"plan_id": PLUS}).context["cl"].result_count == 1


def test_search_by_id(operator, stock):
    stock(PLUS, 3)
    target = Credential.objects.order_by("id")[1]
    assert [
        c.pk for c in operator.get(CHANGELIST_URL, {"q": f"#{target.pk}"}).context["cl"].result_list
    ] == [target.pk]
    assert operator.get(CHANGELIST_URL, {"q": "sk-stock"}).context["cl"].result_count == 0


@pytest.mark.parametrize(
    "lookup",
    [
        "fingerprint__startswith",
        "encrypted_key__startswith",
        "fingerprint",
        "encrypted_key__isnull",
    ],
)
def test_secret_fields_cannot_be_probed_through_url_lookups(operator, stock, lookup):
    stock(PLUS, 1)
    assert operator.get(CHANGELIST_URL, {lookup: "a"}).status_code == 400


def test_credentials_are_read_only(operator, stock):
    (key,) = stock(PLUS, 1)
    credential = credential_for(key)
    assert operator.get(f"{CHANGELIST_URL}add/").status_code == 403
    assert operator.get(f"{CHANGELIST_URL}{credential.pk}/delete/").status_code == 403
    page = operator.post(
        f"{CHANGELIST_URL}{credential.pk}/change/", {"state": "revoked", "plan_id": MAX}
    )
    assert page.status_code == 403
    credential.refresh_from_db()
    assert (credential.state, credential.plan_id) == ("available", PLUS)
    html = operator.get(f"{CHANGELIST_URL}{credential.pk}/change/").content.decode()
    assert 'name="_save"' not in html and 'name="state"' not in html


def test_changelist_query_count_does_not_grow_with_rows(operator, stock, queue_item):
    stock(PLUS, 2)
    queue_item(PLUS)
    with CaptureQueriesContext(connection) as few:
        assert operator.get(CHANGELIST_URL).status_code == 200
    stock(MAX, 20)
    for _ in range(5):
        queue_item(ULTRA)
    with CaptureQueriesContext(connection) as many:
        assert operator.get(CHANGELIST_URL).status_code == 200
    assert len(many) == len(few)
    assert not any("encrypted_key" in q["sql"] for q in many.captured_queries)
