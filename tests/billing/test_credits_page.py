"""The /credits page: balance, ledger history and the auto top-up form (SPEC U7, 11.1a)."""

from __future__ import annotations

import re

import pytest
from django.db import transaction
from django.test import Client
from django.utils import timezone

from billing.models import CreditAccount, LedgerEntry
from billing.services import grant_credits, post_entry

pytestmark = pytest.mark.django_db


def settings_of(user) -> tuple[int, bool, int]:
    account = CreditAccount.objects.get(user=user)
    return account.balance_micros, account.auto_top_up_enabled, account.auto_top_up_amount_micros


def history_rows(html: str) -> list[str]:
    body = html.split("<tbody>", 1)[1].split("</tbody>", 1)[0] if "<tbody>" in html else ""
    return re.findall(r"<tr>.*?</tr>", body, flags=re.S)


def test_credits_page_requires_login(customer):
    # SPEC 11.1a: session log-in; anonymous visitors go to the log-in page.
    r = Client().get("/credits/")
    assert r.status_code == 302
    assert r["Location"] == "/accounts/login/?next=/credits/"


def test_credits_path_without_slash_redirects(logged_in):
    # SPEC 11.1a: the other form of the path redirects to the canonical one.
    r = logged_in.get("/credits")
    assert r.status_code == 301
    assert r["Location"] == "/credits/"


def test_credits_page_shows_balance_in_usd_and_history(logged_in, customer):
    # SPEC U7, 0: balance in USD, ledger history; never microdollars.
    with transaction.atomic():
        post_entry(
            user=customer,
            amount_micros=-20_000_000,
            kind=LedgerEntry.Kind.PURCHASE,
            actor="system:test",
            reason="Token Plan Plus",
            now=timezone.now(),
        )
    r = logged_in.get("/credits/")
    assert r.status_code == 200
    html = r.content.decode()
    assert re.search(r'id="balance">\$80\.00<', html)
    rows = history_rows(html)
    assert len(rows) == 2
    assert "Plan purchase" in rows[0] and "-$20.00" in rows[0] and "$80.00" in rows[0]
    assert "Grant" in rows[1] and "$100.00" in rows[1]
    for micros in ("100000000", "80000000", "20000000", "micro"):
        assert micros not in html


def test_credits_page_of_a_new_user_shows_zero_and_no_history(make_user):
    client = Client()
    client.force_login(make_user())
    html = client.get("/credits/").content.decode()
    assert re.search(r'id="balance">\$0\.00<', html)
    assert "No credit activity yet." in html


def test_credits_page_shows_only_own_history(logged_in, make_user):
    # SPEC S2: customers reach only their own objects.
    other = make_user(credits_usd=7)
    grant_credits(
        user=other,
        amount_micros=1_230_000,
        actor="system:test",
        reason="Secret bonus",
        now=timezone.now(),
    )
    html = logged_in.get("/credits/").content.decode()
    assert "Secret bonus" not in html
    assert "$8.23" not in html and "$7.00" not in html


def test_long_history_is_paginated(logged_in, customer):
    # SPEC U7: ledger history, newest first, with a way to older entries.
    for i in range(55):
        grant_credits(
            user=customer,
            amount_micros=10_000,
            actor="system:test",
            reason=f"tip {i}",
            now=timezone.now(),
        )
    first = logged_in.get("/credits/").content.decode()
    assert len(history_rows(first)) == 50
    assert "tip 54" in history_rows(first)[0]
    older = re.search(r'href="\?before=(\d+)"', first)
    assert older, "no link to older entries"
    second = logged_in.get(f"/credits/?before={older.group(1)}").content.decode()
    rows = history_rows(second)
    assert len(rows) == 6  # 5 tips + the initial $100 grant
    assert "tip 4" in rows[0] and "$100.00" in rows[-1]
    assert "?before=" not in second


def test_auto_top_up_form_saves_settings(logged_in, customer):
    # SPEC U7: auto top-up on/off and amount, by a plain form POST.
    r = logged_in.post("/credits/auto-top-up/", {"enabled": "on", "amount_usd": "45.50"})
    assert r.status_code == 302
    assert r["Location"] == "/credits/"
    assert settings_of(customer) == (100_000_000, True, 45_500_000)
    page = logged_in.get("/credits/").content.decode()
    assert "Auto top-up settings saved." in page
    assert 'value="45.50"' in page
    assert re.search(r'name="enabled"[^>]*checked', page)

    r = logged_in.post("/credits/auto-top-up/", {"amount_usd": "45.50"})  # box unticked
    assert r.status_code == 302
    assert settings_of(customer) == (100_000_000, False, 45_500_000)


@pytest.mark.parametrize("amount", ["abc", "-5", "0", "20.005", "", "10000.01", "NaN"])
def test_auto_top_up_form_with_bad_amount_shows_error_and_changes_nothing(
    logged_in, customer, amount
):
    before = settings_of(customer)
    r = logged_in.post("/credits/auto-top-up/", {"enabled": "on", "amount_usd": amount})
    assert r.status_code == 200
    html = r.content.decode()
    assert 'class="errorlist"' in html
    assert settings_of(customer) == before


def test_auto_top_up_form_needs_login(customer):
    r = Client().post("/credits/auto-top-up/", {"enabled": "on", "amount_usd": "30"})
    assert r.status_code == 302
    assert r["Location"].startswith("/accounts/login/")
    assert settings_of(customer)[1:] == (False, 20_000_000)


def test_auto_top_up_form_needs_csrf_token(customer):
    # SPEC S2: CSRF on every form.
    client = Client(enforce_csrf_checks=True)
    client.force_login(customer)
    r = client.post("/credits/auto-top-up/", {"enabled": "on", "amount_usd": "30"})
    assert r.status_code == 403
    assert settings_of(customer)[1:] == (False, 20_000_000)


def test_auto_top_up_form_only_accepts_post(logged_in):
    assert logged_in.get("/credits/auto-top-up/").status_code == 405
