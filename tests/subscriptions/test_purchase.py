"""The atomic purchase (SPEC P1–P7), the catalog (C1–C3) and the subscription API (11.1).

HTTP tests go through the real API with a personal token (the `api` fixture: a customer with
$100); service tests call `purchase_plan` directly. Stock comes from the real upload service
against the stand-in MiniMax server (the `stock` fixture). Nothing of ours is mocked.
"""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.utils import timezone

from adminops.models import AuditEvent
from billing.errors import InsufficientCredits
from billing.models import CreditAccount, LedgerEntry
from billing.services import grant_credits
from byok.models import ByokKey
from codingplans import crypto
from codingplans.errors import DomainError
from inventory.models import Credential
from subscriptions import errors
from subscriptions.models import AvailabilityIntent, ChargedTerm, PurchaseRequest, Subscription
from subscriptions.purchase import purchase_plan
from tests.conftest import api_client_for

pytestmark = pytest.mark.django_db

JSON = "application/json"
PURCHASES = "/api/v1/coding-plans/purchases"
SUBSCRIPTIONS = "/api/v1/coding-plans/subscriptions"
CATALOG = "/api/v1/coding-plans/catalog"
PLUS = "minimax-token-plan-plus"
MAX = "minimax-token-plan-max"
ULTRA = "minimax-token-plan-ultra"
OWN_KEY = "sk-own-minimax-key-4242"
MICROS = 1_000_000

S_KEYS = {
    "id",
    "plan_id",
    "provider_id",
    "name",
    "status",
    "price_usd",
    "billing_period_days",
    "payment_source",
    "current_period_start",
    "current_period_end",
    "cancel_at_period_end",
    "grace_deadline",
    "canceled_at",
    "cancellation_reason",
    "byok_key_id",
}


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    """Users here never log in with a password; PBKDF2's million rounds only cost time."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def fresh_cache():
    """Per-user purchase rate-limit counters live in the shared cache, keyed by user id (ids
    restart after a transactional test's flush): no counts carried over from other tests."""
    cache.clear()
    yield
    cache.clear()


# --- helpers ------------------------------------------------------------------------------


def buy(client, plan_id: object = PLUS, key: str | None = "key-1"):
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    return client.post(PURCHASES, {"plan_id": plan_id}, content_type=JSON, **headers)


def error_of(response) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return response.status_code, body["error"]["code"]


def add_own_key(client, *, enabled: bool = True) -> int:
    r = client.post(
        "/api/v1/byok", {"provider_id": "minimax", "api_key": OWN_KEY}, content_type=JSON
    )
    assert r.status_code == 201, r.content
    key_id = r.json()["id"]
    if not enabled:
        r = client.patch(f"/api/v1/byok/{key_id}", {"enabled": False}, content_type=JSON)
        assert r.status_code == 200 and r.json()["enabled"] is False
    return key_id


def world(user) -> dict:
    """Everything a purchase could touch, to show that a refused one consumed nothing (P3, P4)."""
    return {
        "balance": CreditAccount.objects.get(user=user).balance_micros,
        "ledger": sorted(
            LedgerEntry.objects.filter(account__user=user).values_list("id", flat=True)
        ),
        "terms": sorted(ChargedTerm.objects.values_list("id", flat=True)),
        "subscriptions": sorted(Subscription.objects.values_list("id", "status")),
        "credentials": sorted(Credential.objects.values_list("id", "state", "assigned_to_id")),
        "purchase_requests": sorted(PurchaseRequest.objects.values_list("id", flat=True)),
        "byok": sorted(
            ByokKey.objects.values_list("id", "enabled", "managed_by", "subscription_id")
        ),
        "intents": sorted(AvailabilityIntent.objects.values_list("id", "plan_id")),
    }


def end_subscription(subscription_id: int) -> None:
    """Simulate what the lifecycle does at effective cancellation (L3, L5, B4): terminal status,
    the still-linked installed entry deleted, the credential queued for revocation."""
    now = timezone.now()
    sub = Subscription.objects.get(pk=subscription_id)
    Subscription.objects.filter(pk=sub.pk).update(
        status=Subscription.Status.CANCELED,
        canceled_at=now,
        cancellation_reason=Subscription.Reason.USER_REQUESTED,
        updated_at=now,
    )
    ByokKey.objects.filter(subscription_id=sub.pk).delete()
    Credential.objects.filter(pk=sub.credential_id).update(
        state=Credential.State.REVOCATION_PENDING, encrypted_key="", revocation_requested_at=now
    )


def assert_no_secrets(response, keys: list[str]) -> None:
    """S1, C3, P5: no key, no upstream plan id, no credential metadata in any response."""
    text = response.content.decode()
    for key in keys:
        assert key not in text
        assert key[-12:] not in text
    assert "up-sk-" not in text and "upstream" not in text.lower()
    assert "encrypted" not in text and "fingerprint" not in text


# --- P5: every refusal with its status and code --------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"HTTP_IDEMPOTENCY_KEY": ""}, {"HTTP_IDEMPOTENCY_KEY": "   "}],
    ids=["absent", "empty", "blank"],
)
def test_purchase_without_idempotency_key_is_400(api, stock, customer, headers):
    # SPEC P3, P5, 11.1: every purchase request carries an idempotency key.
    stock(PLUS)
    before = world(customer)
    r = api.post(PURCHASES, {"plan_id": PLUS}, content_type=JSON, **headers)
    assert error_of(r) == (400, "idempotency_key_missing")
    assert world(customer) == before


def test_overlong_idempotency_key_is_refused_with_400(api, stock, customer):
    stock(PLUS)
    before = world(customer)
    r = buy(api, PLUS, "k" * 256)
    assert r.status_code == 400 and error_of(r)[1] == "idempotency_key_missing"
    assert world(customer) == before
    assert buy(api, PLUS, "k" * 255).status_code == 201


@pytest.mark.parametrize(
    "body",
    [
        {"plan_id": "minimax-token-plan-mega"},
        {"plan_id": "minimax"},  # a provider id is not a plan id (SPEC 0)
        {"plan_id": PLUS.upper()},
        {"plan_id": 5},
        {"plan_id": None},
        {"plan_id": [PLUS]},
        {},
        [],
    ],
    ids=["unknown", "provider-id", "wrong-case", "int", "null", "list", "no-plan", "array"],
)
def test_unknown_or_missing_plan_is_404_plan_not_found(api, stock, customer, body):
    # SPEC P5, 11.1
    stock(PLUS)
    before = world(customer)
    r = api.post(PURCHASES, json.dumps(body), content_type=JSON, HTTP_IDEMPOTENCY_KEY="k")
    assert error_of(r) == (404, "plan_not_found")
    assert world(customer) == before


@pytest.mark.parametrize("raw", [b"", b"not json", b'{"plan_id": ', b"\xff\xfe\x00"])
def test_unparseable_body_still_follows_p5_order(api, customer, raw):
    # SPEC P5: the missing key is reported first, then the (unnamed) plan — never a parse error.
    no_key = api.post(PURCHASES, raw, content_type=JSON)
    assert error_of(no_key) == (400, "idempotency_key_missing")
    with_key = api.post(PURCHASES, raw, content_type=JSON, HTTP_IDEMPOTENCY_KEY="k")
    assert error_of(with_key) == (404, "plan_not_found")


def test_purchase_without_body_or_key_is_idempotency_key_missing(api):
    assert error_of(api.post(PURCHASES)) == (400, "idempotency_key_missing")
    assert error_of(api.post(PURCHASES, HTTP_IDEMPOTENCY_KEY="k")) == (404, "plan_not_found")


def test_key_reused_for_another_plan_is_422(api, stock, customer):
    # SPEC P3: reusing a key for another plan is refused.
    stock(PLUS)
    stock(MAX)
    assert buy(api, PLUS, "k1").status_code == 201
    before = world(customer)
    r = buy(api, MAX, "k1")
    assert error_of(r) == (422, "idempotency_key_reused")
    assert world(customer) == before


def test_live_subscription_for_provider_is_409_subscription_exists(api, stock, customer):
    # SPEC P2, P5: one live subscription per user and provider — another plan of the same
    # provider is refused too, and the message says to cancel and wait until access ends.
    stock(PLUS)
    stock(MAX)
    first = buy(api, PLUS, "k1").json()["subscription"]
    before = world(customer)
    for plan_id, key in [(MAX, "k2"), (PLUS, "k3")]:
        r = buy(api, plan_id, key)
        assert error_of(r) == (409, "subscription_exists")
        message = r.json()["error"]["message"].lower()
        assert "cancel" in message and "access ends" in message
    assert world(customer) == before
    # No extra prepaid period is sold for a live subscription (P2).
    assert ChargedTerm.objects.filter(subscription_id=first["id"]).count() == 1


def test_past_due_subscription_also_blocks(api, stock, customer):
    # SPEC 0: past_due is live.
    stock(PLUS, 2)
    sub_id = buy(api, PLUS, "k1").json()["subscription"]["id"]
    Subscription.objects.filter(pk=sub_id).update(
        status=Subscription.Status.PAST_DUE, grace_deadline=timezone.now() + timedelta(hours=24)
    )
    assert error_of(buy(api, PLUS, "k2")) == (409, "subscription_exists")


def test_subscription_set_to_cancel_at_period_end_still_blocks(api, stock):
    # SPEC 0: one set to cancel at period end is still live.
    stock(PLUS, 2)
    sub_id = buy(api, PLUS, "k1").json()["subscription"]["id"]
    Subscription.objects.filter(pk=sub_id).update(cancel_at_period_end=True)
    assert error_of(buy(api, PLUS, "k2")) == (409, "subscription_exists")


@pytest.mark.parametrize("enabled", [True, False], ids=["enabled", "disabled"])
def test_own_minimax_key_occupies_the_slot(api, stock, customer, enabled):
    # SPEC P4 (1), P5, P7: a customer's own MiniMax key — even a disabled one — occupies the slot.
    keys = stock(PLUS)
    key_id = add_own_key(api, enabled=enabled)
    before = world(customer)
    r = buy(api, PLUS)
    assert error_of(r) == (409, "provider_slot_occupied")
    message = r.json()["error"]["message"]
    assert "delete" in message.lower() and "BYOK" in message and "MiniMax" in message
    assert world(customer) == before
    assert_no_secrets(r, [*keys, OWN_KEY])
    # Deleting the own key frees the slot; the same key is judged afresh (P3).
    assert api.delete(f"/api/v1/byok/{key_id}").status_code == 204
    assert buy(api, PLUS).status_code == 201


def test_insufficient_credits_is_402(make_user, stock):
    # SPEC P4 (2), P5: the balance may never go negative.
    keys = stock(PLUS)
    poor = make_user(credits_usd=19)
    client = api_client_for(poor)
    before = world(poor)
    r = buy(client, PLUS)
    assert error_of(r) == (402, "insufficient_credits")
    assert world(poor) == before
    assert_no_secrets(r, keys)


def test_exact_balance_is_enough(make_user, stock):
    stock(PLUS)
    user = make_user(credits_usd=20)
    assert buy(api_client_for(user), PLUS).status_code == 201
    assert CreditAccount.objects.get(user=user).balance_micros == 0


def test_sold_out_is_409_and_nothing_is_charged(api, stock, customer):
    # SPEC C3, P4 (3), P5: stock of another plan does not help; nothing charged.
    stock(MAX)
    before = world(customer)
    r = buy(api, PLUS)
    assert error_of(r) == (409, "sold_out")
    assert "nothing was charged" in r.json()["error"]["message"].lower()
    assert world(customer) == before


def test_credentials_in_other_states_are_not_stock(api, stock, customer, make_user):
    # SPEC I4: only `available` credentials are sold; none ever returns to available.
    stock(PLUS, 1)
    other = make_user(credits_usd=50)
    sub_id = buy(api_client_for(other), PLUS).json()["subscription"]["id"]
    end_subscription(sub_id)  # its credential is now revocation_pending
    assert error_of(buy(api, PLUS)) == (409, "sold_out")


# --- P5: precedence when several apply -------------------------------------------------------


def test_missing_key_wins_over_unknown_plan(api):
    r = api.post(PURCHASES, {"plan_id": "nope"}, content_type=JSON)
    assert error_of(r) == (400, "idempotency_key_missing")


def test_unknown_plan_wins_over_reused_key(api, stock):
    stock(PLUS)
    assert buy(api, PLUS, "k1").status_code == 201
    assert error_of(buy(api, "nope", "k1")) == (404, "plan_not_found")


def test_reused_key_wins_over_subscription_exists_and_sold_out(api, stock, customer):
    stock(PLUS)
    assert buy(api, PLUS, "k1").status_code == 201
    # MAX: no stock, and a live minimax subscription exists — the reused key is reported.
    assert error_of(buy(api, MAX, "k1")) == (422, "idempotency_key_reused")
    assert error_of(buy(api, MAX, "k2")) == (409, "subscription_exists")


def test_subscription_exists_wins_over_slot_insufficient_and_sold_out(api, stock, customer):
    stock(PLUS)
    sub = buy(api, PLUS, "k1").json()["subscription"]
    # Replacing the installed key makes it the customer's own (B3): the slot is occupied by an
    # own key, the live subscription remains; the balance is short for Ultra and it has no stock.
    r = api.patch(f"/api/v1/byok/{sub['byok_key_id']}", {"api_key": OWN_KEY}, content_type=JSON)
    assert r.status_code == 200 and r.json()["managed_by"] is None
    assert CreditAccount.objects.get(user=customer).balance_micros < 120 * MICROS
    assert error_of(buy(api, ULTRA, "k2")) == (409, "subscription_exists")


def test_slot_occupied_wins_over_insufficient_and_sold_out(make_user):
    poor = make_user(credits_usd=0)
    client = api_client_for(poor)
    add_own_key(client)
    assert error_of(buy(client, PLUS)) == (409, "provider_slot_occupied")


def test_slot_occupied_wins_over_insufficient_credits(make_user, stock):
    stock(PLUS)
    poor = make_user(credits_usd=5)
    client = api_client_for(poor)
    add_own_key(client, enabled=False)
    assert error_of(buy(client, PLUS)) == (409, "provider_slot_occupied")


def test_insufficient_credits_wins_over_sold_out(make_user):
    poor = make_user(credits_usd=10)
    assert error_of(buy(api_client_for(poor), PLUS)) == (402, "insufficient_credits")


# --- P3: a refused request consumes nothing; replay -------------------------------------------


def test_refused_request_consumes_nothing_and_retry_after_credits_succeeds(make_user, stock):
    # SPEC P3: a refused request (any 4xx) consumes nothing; the same key is judged afresh.
    keys = stock(PLUS)
    user = make_user(credits_usd=10)
    client = api_client_for(user)
    before = world(user)
    refused = buy(client, PLUS, "retry-me")
    assert error_of(refused) == (402, "insufficient_credits")
    assert world(user) == before
    assert not PurchaseRequest.objects.exists()
    assert Credential.objects.get().state == Credential.State.AVAILABLE

    grant_credits(user=user, amount_micros=15 * MICROS, actor="system:test", now=timezone.now())
    ok = buy(client, PLUS, "retry-me")
    assert ok.status_code == 201, ok.content
    assert CreditAccount.objects.get(user=user).balance_micros == 5 * MICROS
    assert PurchaseRequest.objects.filter(user=user, idempotency_key="retry-me").count() == 1
    assert_no_secrets(ok, keys)


def test_sold_out_key_can_be_retried_when_stock_arrives(api, stock, customer):
    # SPEC P3: after `sold_out`, stock arrives and the same key buys.
    assert error_of(buy(api, PLUS, "k")) == (409, "sold_out")
    stock(PLUS)
    assert buy(api, PLUS, "k").status_code == 201


def test_refused_key_may_be_used_for_another_plan(api, stock):
    # SPEC P3: nothing was stored for the refused request, so the key is not "reused".
    stock(MAX)
    assert error_of(buy(api, PLUS, "k")) == (409, "sold_out")
    assert buy(api, MAX, "k").status_code == 201


def test_replay_returns_identical_status_and_body_without_new_charge(api, stock, customer):
    # SPEC P3, 11.1: replay → same status and body; no new charge, term or assignment.
    stock(PLUS, 3)
    first = buy(api, PLUS, "same")
    assert first.status_code == 201
    after_first = world(customer)
    for _ in range(3):
        again = buy(api, PLUS, "same")
        assert again.status_code == first.status_code
        assert again.content == first.content
    assert world(customer) == after_first
    assert Credential.objects.filter(state=Credential.State.AVAILABLE).count() == 2


def test_replay_returns_the_original_response_even_after_changes(api, stock, customer):
    # SPEC P3: "returns the original response" — later state does not leak into the replay.
    stock(PLUS)
    first = buy(api, PLUS, "same")
    Subscription.objects.filter(pk=first.json()["subscription"]["id"]).update(
        cancel_at_period_end=True
    )
    again = buy(api, PLUS, "same")
    assert again.status_code == 201 and again.json() == first.json()
    assert again.json()["subscription"]["cancel_at_period_end"] is False


def test_idempotency_keys_are_per_user(make_user, stock):
    # SPEC P3: the key is scoped to the user: another customer's same key is a new purchase.
    stock(PLUS, 2)
    a, b = make_user(credits_usd=20), make_user(credits_usd=20)
    ra = buy(api_client_for(a), PLUS, "shared")
    rb = buy(api_client_for(b), PLUS, "shared")
    assert ra.status_code == rb.status_code == 201
    assert ra.json()["subscription"]["id"] != rb.json()["subscription"]["id"]
    assert Subscription.objects.count() == 2


def test_terminal_subscription_does_not_block_a_new_purchase(api, stock, customer):
    # SPEC P2: a terminal (canceled) subscription does not block a new purchase.
    stock(PLUS)
    stock(MAX)
    old = buy(api, PLUS, "k1").json()["subscription"]
    end_subscription(old["id"])
    r = buy(api, MAX, "k2")
    assert r.status_code == 201, r.content
    new = r.json()["subscription"]
    assert new["plan_id"] == MAX and new["status"] == "active" and new["id"] != old["id"]
    assert CreditAccount.objects.get(user=customer).balance_micros == 30 * MICROS


def test_own_key_left_after_termination_still_occupies_slot(api, stock):
    # SPEC B3, B4: a replaced installed entry is the customer's own key; it survives the
    # subscription, and it occupies the slot for the next purchase.
    stock(PLUS, 2)
    sub = buy(api, PLUS, "k1").json()["subscription"]
    api.patch(f"/api/v1/byok/{sub['byok_key_id']}", {"api_key": OWN_KEY}, content_type=JSON)
    end_subscription(sub["id"])
    assert ByokKey.objects.filter(pk=sub["byok_key_id"]).exists()
    assert error_of(buy(api, PLUS, "k2")) == (409, "provider_slot_occupied")


# --- P4 / P6: what an activation leaves behind ----------------------------------------------


def test_activation_installs_linked_entry_and_charges_one_term(api, stock, customer):
    # SPEC P4 (2)–(6), P6, B2, L2 snapshot.
    keys = stock(PLUS)
    r = buy(api, PLUS, "k1")
    assert r.status_code == 201, r.content
    assert set(r.json()) == {"subscription"}
    s = r.json()["subscription"]
    assert set(s) == S_KEYS
    sub = Subscription.objects.get(pk=s["id"])
    credential = Credential.objects.get()

    # (3) the credential is claimed for this user.
    assert credential.state == Credential.State.ASSIGNED
    assert sub.credential_id == credential.pk
    assert credential.assigned_to_id == customer.pk and credential.assigned_at is not None

    # (4) the installed entry: managed by the plan, linked, enabled, the credential's key.
    entry = ByokKey.objects.get(user=customer, provider_id="minimax")
    assert entry.managed_by == ByokKey.ManagedBy.CODING_PLAN
    assert entry.subscription_id == sub.pk and entry.enabled is True
    assert crypto.decrypt(entry.encrypted_key) == keys[0]
    assert crypto.decrypt(entry.encrypted_key) == crypto.decrypt(credential.encrypted_key)
    assert entry.encrypted_key != credential.encrypted_key  # encrypted on its own
    assert entry.key_hint == "…" + keys[0][-4:]
    assert s["byok_key_id"] == entry.pk

    # (2) + (5) one debit, one term snapshotting the price and a 30-day period.
    term = ChargedTerm.objects.get(subscription=sub)
    assert term.amount_micros == 20 * MICROS
    assert term.period_end - term.period_start == timedelta(days=30)
    assert term.ledger_entry.amount_micros == -20 * MICROS
    assert term.ledger_entry.kind == LedgerEntry.Kind.PURCHASE
    assert term.ledger_entry.account.user_id == customer.pk
    assert term.ledger_entry.reference == f"subscription:{sub.pk}"
    assert "Token Plan Plus" in term.description
    assert CreditAccount.objects.get(user=customer).balance_micros == 80 * MICROS

    # (6) active with its paid period; the price and period are recorded for renewals (L2).
    assert sub.status == Subscription.Status.ACTIVE
    assert (sub.current_period_start, sub.current_period_end) == (
        term.period_start,
        term.period_end,
    )
    assert sub.price_micros == 20 * MICROS and sub.billing_period_days == 30
    assert s["status"] == "active" and s["price_usd"] == "20.00"
    assert s["billing_period_days"] == 30 and s["payment_source"] == "Credits"
    assert s["plan_id"] == PLUS and s["provider_id"] == "minimax"
    assert s["name"] == "Token Plan Plus"
    assert s["cancel_at_period_end"] is False
    assert s["grace_deadline"] is None and s["canceled_at"] is None
    assert s["cancellation_reason"] is None
    assert s["current_period_start"].endswith("Z") and s["current_period_end"].endswith("Z")

    # O1: the purchase and the assignment are audited, without secrets.
    events = AuditEvent.objects.filter(
        event_type__in=["subscription.purchased", "credential.assigned"]
    )
    assert events.count() == 2
    assert all(keys[0] not in json.dumps([e.old_values, e.new_values]) for e in events)

    # The BYOK API shows the entry as the plan's, with only a hint (B1, B2).
    listed = api.get("/api/v1/byok").json()["keys"]
    assert [(k["id"], k["managed_by"], k["subscription_id"], k["enabled"]) for k in listed] == [
        (entry.pk, "coding_plan", sub.pk, True)
    ]
    assert_no_secrets(r, keys)


def test_period_and_price_come_from_the_plan(make_user, stock):
    # SPEC C1, P4 (5): Max costs $50, Ultra $120, each for 30 days.
    for plan_id, usd in [(MAX, 50), (ULTRA, 120)]:
        stock(plan_id)
        user = make_user(credits_usd=usd)
        s = buy(api_client_for(user), plan_id).json()["subscription"]
        assert s["price_usd"] == f"{usd}.00"
        term = ChargedTerm.objects.get(subscription_id=s["id"])
        assert term.amount_micros == usd * MICROS
        assert term.period_end - term.period_start == timedelta(days=30)
        assert CreditAccount.objects.get(user=user).balance_micros == 0


def test_activation_clears_the_availability_intent_for_that_plan(api, stock, customer):
    # SPEC P4 (7), U6: activation clears the user's intent for that plan, not for others.
    for plan_id in (PLUS, MAX):
        r = api.put(f"/api/v1/coding-plans/{plan_id}/availability-intent")
        assert r.json() == {"plan_id": plan_id, "saved": True}
    stock(PLUS)
    assert buy(api, PLUS).status_code == 201
    assert api.get(f"/api/v1/coding-plans/{PLUS}/availability-intent").json()["saved"] is False
    assert api.get(f"/api/v1/coding-plans/{MAX}/availability-intent").json()["saved"] is True
    assert list(AvailabilityIntent.objects.values_list("plan_id", flat=True)) == [MAX]


def test_refused_purchase_keeps_the_availability_intent(api, customer):
    # SPEC P4: nothing commits on failure — the intent stays too.
    api.put(f"/api/v1/coding-plans/{PLUS}/availability-intent")
    assert error_of(buy(api, PLUS)) == (409, "sold_out")
    assert AvailabilityIntent.objects.filter(user=customer, plan_id=PLUS).exists()


def test_each_purchase_claims_a_different_credential(make_user, stock):
    # SPEC I4: a credential is assigned at most once.
    keys = stock(PLUS, 3)
    installed = []
    for _ in range(3):
        user = make_user(credits_usd=20)
        assert buy(api_client_for(user), PLUS).status_code == 201
        installed.append(crypto.decrypt(ByokKey.objects.get(user=user).encrypted_key))
    assert sorted(installed) == sorted(keys)
    assert not Credential.objects.filter(state=Credential.State.AVAILABLE).exists()
    assert error_of(buy(api_client_for(make_user(credits_usd=20)), PLUS)) == (409, "sold_out")


def test_error_bodies_never_contain_key_material(api, stock, customer, make_user):
    # SPEC P5, S1: errors tell the cause without exposing credential data.
    keys = stock(PLUS)
    responses = [
        api.post(PURCHASES, {"plan_id": PLUS}, content_type=JSON),
        buy(api, "nope"),
        buy(api, PLUS, "k1"),
        buy(api, MAX, "k1"),
        buy(api, MAX, "k2"),
        buy(api_client_for(make_user(credits_usd=1)), PLUS),
        buy(api_client_for(make_user(credits_usd=50)), PLUS),
    ]
    poor = api_client_for(make_user())
    add_own_key(poor)
    responses.append(buy(poor, PLUS))
    codes = [r.json().get("error", {}).get("code") for r in responses]
    assert codes == [
        "idempotency_key_missing",
        "plan_not_found",
        None,
        "idempotency_key_reused",
        "subscription_exists",
        "insufficient_credits",
        "sold_out",
        "provider_slot_occupied",
    ]
    for r in responses:
        assert_no_secrets(r, [*keys, OWN_KEY])


# --- service level ------------------------------------------------------------------------


def _code(exc: pytest.ExceptionInfo) -> str:
    assert isinstance(exc.value, DomainError)
    return exc.value.code


def test_service_refusals_carry_the_p5_codes(make_user, stock):
    now = timezone.now()
    user = make_user(credits_usd=10)
    cases = [
        (dict(plan_id=PLUS, idempotency_key=None), errors.IdempotencyKeyMissing, 400),
        (dict(plan_id=PLUS, idempotency_key=" \t"), errors.IdempotencyKeyMissing, 400),
        (dict(plan_id="nope", idempotency_key="k"), errors.PlanNotFound, 404),
        (dict(plan_id=None, idempotency_key="k"), errors.PlanNotFound, 404),
        (dict(plan_id=PLUS, idempotency_key="k"), InsufficientCredits, 402),
    ]
    for kwargs, exc_type, status in cases:
        with pytest.raises(exc_type) as exc:
            purchase_plan(user=user, now=now, **kwargs)
        assert exc.value.status == status
    grant_credits(user=user, amount_micros=90 * MICROS, actor="system:test", now=now)
    with pytest.raises(errors.SoldOut) as exc:
        purchase_plan(user=user, plan_id=PLUS, idempotency_key="k", now=now)
    assert (_code(exc), exc.value.status) == ("sold_out", 409)
    stock(PLUS)
    outcome = purchase_plan(user=user, plan_id=PLUS, idempotency_key="k", now=now)
    assert outcome.status == 201 and outcome.replayed is False
    with pytest.raises(errors.IdempotencyKeyReused) as exc:
        purchase_plan(user=user, plan_id=MAX, idempotency_key="k", now=now)
    assert (_code(exc), exc.value.status) == ("idempotency_key_reused", 422)
    with pytest.raises(errors.SubscriptionExists) as exc:
        purchase_plan(user=user, plan_id=MAX, idempotency_key="k2", now=now)
    assert (_code(exc), exc.value.status) == ("subscription_exists", 409)


def test_service_slot_check_raises_provider_slot_occupied(make_user, stock):
    from byok.services import add_key

    stock(PLUS)
    now = timezone.now()
    user = make_user(credits_usd=20)
    add_key(user=user, provider_id="minimax", api_key=OWN_KEY, now=now)
    with pytest.raises(errors.ProviderSlotOccupied) as exc:
        purchase_plan(user=user, plan_id=PLUS, idempotency_key="k", now=now)
    assert (_code(exc), exc.value.status) == ("provider_slot_occupied", 409)


def test_service_replay_reports_replayed_and_uses_the_given_clock(make_user, stock):
    # DESIGN: services take `now`; the paid period starts at it.
    stock(PLUS)
    user = make_user(credits_usd=20)
    now = timezone.now() - timedelta(days=3)
    first = purchase_plan(user=user, plan_id=PLUS, idempotency_key="k", now=now)
    again = purchase_plan(user=user, plan_id=PLUS, idempotency_key="k", now=timezone.now())
    assert (again.status, again.body, again.subscription_id) == (
        first.status,
        first.body,
        first.subscription_id,
    )
    assert first.replayed is False and again.replayed is True
    sub = Subscription.objects.get(pk=first.subscription_id)
    assert sub.current_period_start == now
    assert sub.current_period_end == now + timedelta(days=30)
    assert ChargedTerm.objects.get(subscription=sub).charged_at == now
    assert LedgerEntry.objects.filter(kind=LedgerEntry.Kind.PURCHASE).count() == 1


# --- C1–C3: the catalog ---------------------------------------------------------------------


PLAN_KEYS = {
    "plan_id",
    "provider_id",
    "provider_name",
    "name",
    "price_usd",
    "billing_period_days",
    "payment_source",
    "features",
    "sold_out",
}


def test_catalog_shape_and_sold_out_without_counts(api, stock, make_user):
    # SPEC C1, C2, C3, 11.1
    body = api.get(CATALOG).json()
    assert set(body) == {"plans"}
    plans = body["plans"]
    assert [(p["plan_id"], p["name"], p["price_usd"]) for p in plans] == [
        (PLUS, "Token Plan Plus", "20.00"),
        (MAX, "Token Plan Max", "50.00"),
        (ULTRA, "Token Plan Ultra", "120.00"),
        # SPEC V2
        ("byteplus-coding-plan-lite", "Coding Plan Lite", "20.00"),
        ("byteplus-coding-plan-pro", "Coding Plan Pro", "100.00"),
    ]
    for p in plans:
        assert set(p) == PLAN_KEYS
        assert (p["provider_id"], p["provider_name"]) == (
            ("minimax", "MiniMax")
            if p["plan_id"].startswith("minimax")
            else ("byteplus", "BytePlus")
        )
        assert p["billing_period_days"] == 30 and p["payment_source"] == "Credits"
        assert p["features"] and all(isinstance(f, str) and f for f in p["features"])
        assert p["sold_out"] is True

    keys = stock(PLUS, 3)
    stock(ULTRA, 1)
    r = api.get(CATALOG)
    assert {p["plan_id"]: p["sold_out"] for p in r.json()["plans"]} == {
        PLUS: False,
        MAX: True,
        ULTRA: False,
        "byteplus-coding-plan-lite": True,
        "byteplus-coding-plan-pro": True,
    }
    for p in r.json()["plans"]:
        assert set(p) == PLAN_KEYS  # no counts, no credential metadata (C3)
    assert_no_secrets(r, keys)

    # The last available credential sold → sold out again.
    assert buy(api_client_for(make_user(credits_usd=120)), ULTRA).status_code == 201
    ultra = next(p for p in api.get(CATALOG).json()["plans"] if p["plan_id"] == ULTRA)
    assert ultra["sold_out"] is True


# --- 11.1: subscriptions list, detail, charges ----------------------------------------------


def test_subscription_list_hides_terminal_unless_asked(api, stock, customer, make_user):
    # SPEC 11.1, U1: terminal subscriptions hidden by default, revealed with include_terminal.
    stock(PLUS, 2)
    stock(MAX)
    old = buy(api, PLUS, "k1").json()["subscription"]
    end_subscription(old["id"])
    new = buy(api, MAX, "k2").json()["subscription"]
    buy(api_client_for(make_user(credits_usd=20)), PLUS)  # someone else's

    listed = api.get(SUBSCRIPTIONS).json()
    assert set(listed) == {"subscriptions"}
    assert [s["id"] for s in listed["subscriptions"]] == [new["id"]]
    assert listed["subscriptions"][0] == new
    for flag in ("1", "true"):
        everything = api.get(f"{SUBSCRIPTIONS}?include_terminal={flag}").json()["subscriptions"]
        assert [s["id"] for s in everything] == [new["id"], old["id"]]
        ended = everything[1]
        assert set(ended) == S_KEYS
        assert ended["status"] == "canceled"
        assert ended["cancellation_reason"] == "user_requested"
        assert ended["canceled_at"].endswith("Z") and ended["byok_key_id"] is None
    assert [
        s["id"] for s in api.get(f"{SUBSCRIPTIONS}?include_terminal=0").json()["subscriptions"]
    ] == [new["id"]]


def test_subscription_detail_is_the_callers_only(api, stock, make_user):
    # SPEC 11.1, U5, S2: another user's id gives 404, exactly like a missing one.
    stock(PLUS, 2)
    mine = buy(api, PLUS).json()["subscription"]
    other = buy(api_client_for(make_user(credits_usd=20)), PLUS).json()["subscription"]
    r = api.get(f"{SUBSCRIPTIONS}/{mine['id']}")
    assert r.status_code == 200 and r.json() == mine
    missing = api.get(f"{SUBSCRIPTIONS}/{other['id'] + 1000}")
    foreign = api.get(f"{SUBSCRIPTIONS}/{other['id']}")
    assert error_of(foreign) == error_of(missing) == (404, "not_found")
    assert foreign.json() == missing.json()
    assert error_of(api.get(f"{SUBSCRIPTIONS}/{other['id']}/charges")) == (404, "not_found")
    for bad in ("abc", "1.5", "99999999999999999999999"):
        assert error_of(api.get(f"{SUBSCRIPTIONS}/{bad}")) == (404, "not_found")
        assert error_of(api.get(f"{SUBSCRIPTIONS}/{bad}/charges")) == (404, "not_found")


def test_charges_walk_pages_newest_first_with_cursor(api, stock, customer):
    # SPEC 11.1, U2: billing history newest first, "load more" by cursor.
    stock(PLUS)
    s = buy(api, PLUS).json()["subscription"]
    sub = Subscription.objects.get(pk=s["id"])
    account = CreditAccount.objects.get(user=customer)
    start = sub.current_period_start
    for i in range(1, 25):  # 24 earlier renewals + the purchase = 25 terms
        period_start = start - timedelta(days=30 * i)
        entry = LedgerEntry.objects.create(
            account=account,
            kind=LedgerEntry.Kind.RENEWAL,
            amount_micros=-20 * MICROS,
            balance_after_micros=0,
            actor="system:test",
            created_at=period_start,
        )
        ChargedTerm.objects.create(
            subscription=sub,
            amount_micros=20 * MICROS,
            period_start=period_start,
            period_end=period_start + timedelta(days=30),
            charged_at=period_start,
            description=f"renewal {i}",
            ledger_entry=entry,
        )
    expected = list(
        ChargedTerm.objects.filter(subscription=sub)
        .order_by("-period_start")
        .values_list("id", flat=True)
    )
    assert len(expected) == 25

    url = f"{SUBSCRIPTIONS}/{sub.pk}/charges"
    first = api.get(url).json()
    assert set(first) == {"charges", "next_cursor"}
    assert len(first["charges"]) == 20 and first["next_cursor"]
    charge = first["charges"][0]
    assert set(charge) == {
        "id",
        "amount_usd",
        "period_start",
        "period_end",
        "charged_at",
        "description",
    }
    assert charge["amount_usd"] == "20.00" and charge["period_start"].endswith("Z")
    second = api.get(url, {"cursor": first["next_cursor"]}).json()
    assert len(second["charges"]) == 5 and second["next_cursor"] is None
    walked = [c["id"] for c in first["charges"] + second["charges"]]
    assert walked == expected

    # A renewal landing between page loads neither repeats nor skips a row.
    entry = LedgerEntry.objects.create(
        account=account,
        kind=LedgerEntry.Kind.RENEWAL,
        amount_micros=-20 * MICROS,
        balance_after_micros=0,
        actor="system:test",
        created_at=sub.current_period_end,
    )
    ChargedTerm.objects.create(
        subscription=sub,
        amount_micros=20 * MICROS,
        period_start=sub.current_period_end,
        period_end=sub.current_period_end + timedelta(days=30),
        charged_at=sub.current_period_end,
        description="renewal later",
        ledger_entry=entry,
    )
    assert [c["id"] for c in api.get(url, {"cursor": first["next_cursor"]}).json()["charges"]] == (
        expected[20:]
    )


def _b64(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "not a cursor!",
        "%%%",
        _b64("not-a-cursor"),
        _b64("nan:1"),
        _b64("inf:1"),
        _b64("1e18:1"),
        _b64("-1e18:1"),
        _b64("1e300:1"),
        _b64("1700000000.0:"),
        _b64("1700000000.0:x"),
        "\u00e9t\u00e9",
    ],
)
def test_bad_cursor_is_400_invalid_cursor(api, stock, cursor):
    # SPEC 11.1: a cursor we did not issue is a clear 400, never a 500.
    stock(PLUS)
    s = buy(api, PLUS).json()["subscription"]
    r = api.get(f"{SUBSCRIPTIONS}/{s['id']}/charges", {"cursor": cursor})
    assert error_of(r) == (400, "invalid_cursor")
