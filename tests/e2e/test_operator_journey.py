"""An operator's day in a real browser (SPEC I1-I3, I7, L6, R1-R2, O1, O2): log in to the admin,
upload a small batch for a plan and watch the counts change, end a plan with its confirmation,
record the revocation outcome from the queue, and find each of those in the audit trail."""

from __future__ import annotations

import os
import re

import pytest
from django.utils import timezone

from inventory.models import Credential
from subscriptions.models import Subscription
from subscriptions.purchase import purchase_plan
from tests.e2e.conftest import PASSWORD

pytestmark = pytest.mark.browser

PLUS = "minimax-token-plan-plus"
MAX = "minimax-token-plan-max"
# Set to a folder to keep screenshots of the operator's pages for review.
SCREENSHOT_DIR = os.environ.get("CODING_PLANS_SCREENSHOT_DIR", "")
BATCH = [f"sk-e2e-operator-{i:04d}-7a1c" for i in range(3)]


def admin_log_in(page, user) -> None:
    page.goto("/admin/login/")
    page.fill("#id_username", user.email)
    page.fill("#id_password", PASSWORD)
    with page.expect_navigation():
        page.click("input[type=submit]")
    assert page.url.endswith("/admin/"), page.url


def available(page, plan_id: str) -> int:
    """The 'Available' cell of a plan's row on the inventory dashboard."""
    page.goto("/admin/inventory/credential/")
    row = page.locator("#inventory-dashboard tbody tr", has=page.locator(f"a[href*='{plan_id}']"))
    return int(row.locator("td").first.inner_text())


def messages(page) -> str:
    return " ".join(page.locator("ul.messagelist").all_inner_texts())


def test_operator_uploads_terminates_records_revocation_and_audits(page, make_user, stock):
    operator = make_user("operator@example.com", is_staff=True, is_superuser=True)
    # A customer on Max whose plan support will end (its credential then waits for revocation).
    stock(MAX, 1)
    customer = make_user(credits_usd=100)
    bought = purchase_plan(user=customer, plan_id=MAX, idempotency_key="e2e", now=timezone.now())
    subscription = Subscription.objects.get(pk=bought.subscription_id)

    admin_log_in(page, operator)
    panel = page.locator("#sweep-status").inner_text()
    assert "billing sweep" in panel.lower() and "Subscriptions due now" in panel
    if SCREENSHOT_DIR:
        page.screenshot(path=f"{SCREENSHOT_DIR}/admin-home.png", full_page=True)

    # 1. Upload a small batch for Plus by pasting it; the counts change.
    before = available(page, PLUS)
    page.get_by_role("link", name="Upload credentials").first.click()
    page.select_option("select[name=plan_id]", PLUS)
    page.fill("textarea[name=lines]", "\n".join(f"{k}::up-e2e-{i}" for i, k in enumerate(BATCH)))
    with page.expect_navigation():
        page.click("input[type=submit][value='Validate and upload']")
    page.wait_for_selector("text=Stored 3 credentials")  # the status page refreshes itself
    assert re.search(r"/admin/inventory/inventoryupload/\d+/status/", page.url)
    assert not any(key in page.content() for key in BATCH)
    assert available(page, PLUS) == before + 3

    # 2. End the customer's plan from its admin page, after the confirmation.
    page.goto(f"/admin/subscriptions/subscription/{subscription.pk}/change/")
    page.click("#terminate-link")
    consequences = page.locator("#terminate-consequences + ul").inner_text()
    if SCREENSHOT_DIR:
        page.screenshot(path=f"{SCREENSHOT_DIR}/admin-terminate.png", full_page=True)
    assert "ends access now" in consequences
    assert "removes the installed BYOK entry if unchanged" in consequences
    assert "queues the credential for revocation" in consequences
    with page.expect_navigation():
        page.click("#confirm-terminate")
    assert f"Subscription #{subscription.pk} terminated" in messages(page)
    credential = Credential.objects.get(pk=subscription.credential_id)
    assert credential.state == "revocation_pending"

    # 3. Work the revocation queue: record "revoked" for that credential, confirmed.
    page.goto("/admin/")
    page.get_by_role("link", name=re.compile(r"Revocation queue \(1\)")).click()
    queue = page.locator("#revocation-queue")
    assert credential.upstream_plan_id in queue.inner_text()
    queue.get_by_role("link", name=f"Record outcome for credential #{credential.pk}").click()
    page.check("input[name=outcome][value=revoked]")
    with page.expect_navigation():
        page.click("input[type=submit][value=Continue]")
    assert (
        "Record revoked at the provider for credential"
        in page.locator("#confirm-question").inner_text()
    )
    with page.expect_navigation():
        page.click("input[type=submit][value='Yes, record it']")
    assert f"Credential #{credential.pk} recorded as revoked (attempt 1)." in messages(page)
    assert "The revocation queue is empty." in page.content()

    # 4. Both are in the audit trail, by this operator: from the credential's own page ...
    page.goto(f"/admin/inventory/credential/{credential.pk}/change/")
    page.locator("#content-main").get_by_role("link", name="Audit trail", exact=True).click()
    trail = page.locator("#result_list").inner_text()
    assert "credential.revoked" in trail and "credential.revocation_requested" in trail
    assert f"staff:{operator.pk}" in trail
    # ... and everything this operator did, from the actor filter.
    page.goto(f"/admin/adminops/auditevent/?actor=staff:{operator.pk}")
    trail = page.locator("#result_list").inner_text()
    for event_type in (
        "inventory.upload_started",
        "inventory.uploaded",
        "subscription.ended",
        "credential.revoked",
    ):
        assert event_type in trail, event_type
    assert not any(key in page.content() for key in BATCH)
