"""Audit trail completeness (SPEC O1): every state-changing service writes an audit event with the
right actor, in its own transaction.

The services are discovered, not listed by hand: every public function of each app's service
modules (SERVICE_MODULES: `services.py`, `sweep.py`, `actions.py`, `purchase.py`, …) must appear
below, either with scenarios that prove it writes an event, or as "not a state change" with the
reason. A new service that is in neither table fails `test_every_service_is_classified`.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.apps import apps
from django.db import DatabaseError, connection, transaction
from django.db.models import Max
from django.utils import timezone

from accounts import services as accounts
from accounts import tokens
from accounts.models import User
from adminops.audit import SYSTEM_SWEEP
from adminops.keyrotation import rotate_encryption_keys
from adminops.models import AuditEvent
from billing import services as billing
from billing.models import CreditAccount, TopUpAttempt
from billing.topup import ChargeResult
from byok import services as byok
from byok.models import ByokKey
from inventory import alerts, health, upload_jobs
from inventory import services as inventory
from inventory import upload as inventory_upload
from inventory.models import Credential
from payments import services as payments
from subscriptions import actions, intents, replacement
from subscriptions import purchase as purchases
from subscriptions import sweep as billing_sweep
from subscriptions.models import Subscription

pytestmark = pytest.mark.django_db

SERVICE_MODULES = (
    "services",
    "tokens",
    "sweep",
    "actions",
    "purchase",
    "intents",
    "notifications",
    "alerts",
    "keyrotation",
    "upload",
    "upload_jobs",
    "emails",
    "health",
    "replacement",
)
PLUS = "minimax-token-plan-plus"
ROOT = Path(__file__).resolve().parents[2]


def discover_services() -> set[str]:
    found = set()
    for app_config in apps.get_app_configs():
        path = Path(app_config.path).resolve()
        if not path.is_relative_to(ROOT) or "site-packages" in path.parts:
            continue  # Django's own apps (the virtualenv may live inside the checkout)
        for module_name in SERVICE_MODULES:
            name = f"{app_config.name}.{module_name}"
            if importlib.util.find_spec(name) is None:
                continue
            module = importlib.import_module(name)
            for attr, value in vars(module).items():
                if (
                    inspect.isfunction(value)
                    and value.__module__ == module.__name__
                    and not attr.startswith("_")
                ):
                    found.add(f"{name}.{attr}")
    return found


# --- the world a scenario builds on -----------------------------------------------------------


class World:
    def __init__(self, make_user, stock, settings):
        self.make_user = make_user
        self.stock = stock
        self.settings = settings  # pytest-django's: changes are undone after the test
        self.now = timezone.now().replace(microsecond=0)
        self.staff = make_user(is_staff=True)
        self._keys = 0

    @property
    def staff_actor(self) -> str:
        return f"staff:{self.staff.pk}"

    def customer(self, credits_usd: int = 100, *, auto_top_up: bool = False) -> User:
        user = self.make_user(credits_usd=credits_usd)
        if auto_top_up:
            billing.set_auto_top_up(
                user=user,
                enabled=True,
                amount_micros=20_000_000,
                actor="system:test",
                now=self.now - timedelta(days=40),
            )
        return user

    def subscription(self, user: User | None = None, *, due: bool = False) -> Subscription:
        """A live Plus plan; `due`: bought 31 days ago, so its period has just ended."""
        user = user or self.customer()
        self.stock(PLUS, 1)
        bought = self.now - timedelta(days=31) if due else self.now - timedelta(days=1)
        outcome = purchases.purchase_plan(
            user=user, plan_id=PLUS, idempotency_key=f"audit-{user.pk}", now=bought
        )
        return Subscription.objects.select_related("user", "credential").get(
            pk=outcome.subscription_id
        )

    def queued_credential(self) -> Credential:
        subscription = self.subscription()
        actions.terminate_subscription(
            subscription_id=subscription.pk, actor="system:test", now=self.now
        )
        return Credential.objects.get(pk=subscription.credential_id)

    def lines(self, n: int = 2, prefix: str = "sk-audit") -> str:
        keys = []
        for _ in range(n):
            self._keys += 1
            keys.append(f"{prefix}-{self._keys:08d}::up-audit-{self._keys}")
        return "\n".join(keys)


def user_actor(user: User) -> str:
    return f"user:{user.pk}"


@dataclass
class Expect:
    act: Callable[[], Any]
    # event type -> actor, or a function of the act's result giving the actor
    events: dict[str, str | Callable[[Any], str]] = field(default_factory=dict)


# --- scenarios, one or more per state-changing service ----------------------------------------


def purchase(w: World) -> Expect:
    user = w.customer()
    w.stock(PLUS, 1)
    return Expect(
        lambda: purchases.purchase_plan(user=user, plan_id=PLUS, idempotency_key="p", now=w.now),
        {"subscription.purchased": user_actor(user), "credential.assigned": user_actor(user)},
    )


def save_intent(w: World) -> Expect:
    user = w.customer()
    return Expect(
        lambda: intents.save_intent(user=user, plan_id=PLUS, now=w.now),
        {"intent.saved": user_actor(user)},
    )


def withdraw_intent(w: World) -> Expect:
    user = w.customer()
    intents.save_intent(user=user, plan_id=PLUS, now=w.now)
    return Expect(
        lambda: intents.withdraw_intent(user=user, plan_id=PLUS, now=w.now),
        {"intent.withdrawn": user_actor(user)},
    )


def notify_availability(w: World) -> Expect:
    intents.save_intent(user=w.customer(), plan_id=PLUS, now=w.now)
    return Expect(
        lambda: intents.notify_availability(plan_id=PLUS, now=w.now),
        {"intent.notified": "system:notify"},
    )


# The sweep's four outcomes (L2-L5), through the whole run and through one subscription.


def _renewable(w: World) -> Subscription:
    return w.subscription(w.customer(100), due=True)


def _short_with_auto_top_up(w: World) -> Subscription:
    return w.subscription(w.customer(20, auto_top_up=True), due=True)


def _short_without_auto_top_up(w: World) -> Subscription:
    return w.subscription(w.customer(20), due=True)


def _grace_expired(w: World) -> Subscription:
    subscription = _short_with_auto_top_up(w)
    billing_sweep.run_billing_sweep(now=subscription.current_period_end, trigger="other")
    w.now = subscription.current_period_end + billing_sweep.GRACE_PERIOD
    return subscription


def _canceled_by_customer(w: World) -> Subscription:
    subscription = w.subscription(due=True)
    actions.cancel_at_period_end(
        user=subscription.user, subscription_id=subscription.pk, now=w.now - timedelta(days=2)
    )
    return subscription


ENDED = {
    "subscription.ended": SYSTEM_SWEEP,
    "credential.revocation_requested": SYSTEM_SWEEP,
    "byok.installed_entry_removed": SYSTEM_SWEEP,
}
SWEEP_OUTCOMES = {
    "renew": (_renewable, {"subscription.renewed": SYSTEM_SWEEP}),
    "past_due": (_short_with_auto_top_up, {"subscription.past_due": SYSTEM_SWEEP}),
    "terminate": (_short_without_auto_top_up, ENDED),
    "terminate_after_grace": (_grace_expired, ENDED),
    "cancel": (_canceled_by_customer, ENDED),
}


def sweep(outcome: str) -> Callable[[World], Expect]:
    setup, events = SWEEP_OUTCOMES[outcome]

    def scenario(w: World) -> Expect:
        setup(w)
        return Expect(lambda: billing_sweep.run_billing_sweep(now=w.now, trigger="beat"), events)

    scenario.__name__ = f"sweep_{outcome}"
    return scenario


def one_due(outcome: str) -> Callable[[World], Expect]:
    setup, events = SWEEP_OUTCOMES[outcome]

    def scenario(w: World) -> Expect:
        subscription = setup(w)
        return Expect(
            lambda: billing_sweep.process_due_subscription(
                subscription.pk, now=w.now, counts=billing_sweep.SweepCounts()
            ),
            events,
        )

    scenario.__name__ = f"process_due_{outcome}"
    return scenario


def cancel_at_period_end(w: World) -> Expect:
    subscription = w.subscription()
    user = subscription.user
    return Expect(
        lambda: actions.cancel_at_period_end(user=user, subscription_id=subscription.pk, now=w.now),
        {"subscription.cancel_requested": user_actor(user)},
    )


def resume_subscription(w: World) -> Expect:
    subscription = w.subscription()
    user = subscription.user
    actions.cancel_at_period_end(user=user, subscription_id=subscription.pk, now=w.now)
    return Expect(
        lambda: actions.resume_subscription(user=user, subscription_id=subscription.pk, now=w.now),
        {"subscription.resumed": user_actor(user)},
    )


def terminate_subscription(w: World) -> Expect:
    subscription = w.subscription()
    return Expect(
        lambda: actions.terminate_subscription(
            subscription_id=subscription.pk, actor=w.staff_actor, now=w.now
        ),
        {
            "subscription.ended": w.staff_actor,
            "credential.revocation_requested": w.staff_actor,
            "byok.installed_entry_removed": w.staff_actor,
        },
    )


def end_subscription(w: World) -> Expect:
    subscription = w.subscription()

    def act():
        with transaction.atomic():
            locked = Subscription.objects.select_for_update().get(pk=subscription.pk)
            actions.end_subscription(
                subscription=locked,
                reason=Subscription.Reason.ADMINISTRATIVE,
                actor=w.staff_actor,
                now=w.now,
            )

    return Expect(act, {"subscription.ended": w.staff_actor})


def delete_account_by_customer(w: World) -> Expect:
    subscription = w.subscription()
    user = subscription.user
    actor = user_actor(user)
    return Expect(
        lambda: accounts.delete_account(user=user, actor=actor, now=w.now),
        {"account.deleted": actor, "subscription.ended": actor},
    )


def delete_account_by_staff(w: World) -> Expect:
    user = w.subscription().user
    return Expect(
        lambda: accounts.delete_account(user=user, actor=w.staff_actor, now=w.now),
        {"account.deleted": w.staff_actor, "subscription.ended": w.staff_actor},
    )


def create_user_by_sign_up(w: World) -> Expect:
    return Expect(
        lambda: accounts.create_user(email="new@example.com", password="pw-Long-1234", now=w.now),
        {"user.created": user_actor},
    )


def create_user_by_operator(w: World) -> Expect:
    return Expect(
        lambda: accounts.create_user(
            email="made@example.com", password=None, now=w.now, actor="system:command"
        ),
        {"user.created": "system:command"},
    )


def create_user_unverified(w: World) -> Expect:
    return Expect(
        lambda: accounts.create_user(
            email="signup@example.com", password="pw-Long-1234", now=w.now, verified=False
        ),
        {"user.created": user_actor},
    )


# Issue 19 (SPEC A1, A2, E1): the address, the password and the e-mail preferences.


def verify_email(w: World) -> Expect:
    user = accounts.create_user(
        email="unverified@example.com", password="pw-Long-1234", now=w.now, verified=False
    )
    return Expect(
        lambda: accounts.verify_email(user=user, now=w.now),
        {"user.email_verified": user_actor(user)},
    )


def change_email(w: World) -> Expect:
    user = w.customer()
    return Expect(
        lambda: accounts.change_email(user=user, new_email="moved@example.com", now=w.now),
        {"user.email_changed": user_actor(user)},
    )


def set_password_by_change(w: World) -> Expect:
    user = w.customer()
    return Expect(
        lambda: accounts.set_password(
            user=user, password="pw-New-98765", via=accounts.PasswordChannel.CHANGE, now=w.now
        ),
        {"user.password_changed": user_actor(user)},
    )


def set_password_by_reset(w: World) -> Expect:
    user = w.customer()
    return Expect(
        lambda: accounts.set_password(
            user=user, password="pw-New-98765", via=accounts.PasswordChannel.RESET, now=w.now
        ),
        {"user.password_changed": user_actor(user)},
    )


def set_notification_preferences(w: World) -> Expect:
    user = w.customer()
    return Expect(
        lambda: accounts.set_notification_preferences(
            user=user, renewal_reminders=False, now=w.now
        ),
        {"user.notifications_changed": user_actor(user)},
    )


def create_api_token(w: World) -> Expect:
    user = w.customer()
    return Expect(
        lambda: tokens.create_api_token(user=user, now=w.now),
        {"api_token.created": user_actor(user)},
    )


def revoke_api_token(w: World) -> Expect:
    user = w.customer()
    token = tokens.create_api_token(user=user, now=w.now).token
    return Expect(
        lambda: tokens.revoke_api_token(user=user, token_id=token.pk, now=w.now),
        {"api_token.revoked": user_actor(user)},
    )


def grant_credits(w: World) -> Expect:
    user = w.customer(0)
    return Expect(
        lambda: billing.grant_credits(
            user=user, amount_micros=5_000_000, actor=w.staff_actor, now=w.now
        ),
        {"credits.granted": w.staff_actor},
    )


def set_auto_top_up(w: World) -> Expect:
    user = w.customer()
    return Expect(
        lambda: billing.set_auto_top_up(
            user=user, enabled=True, amount_micros=10_000_000, actor=user_actor(user), now=w.now
        ),
        {"credits.auto_top_up_changed": user_actor(user)},
    )


def execute_top_up(w: World) -> Expect:
    subscription = _short_with_auto_top_up(w)
    billing_sweep.run_billing_sweep(now=w.now, trigger="beat")  # records the pending attempt
    attempt = TopUpAttempt.objects.get(subscription_id=subscription.pk, status="pending")
    return Expect(
        lambda: billing.execute_top_up(attempt_id=attempt.pk, now=w.now),
        {"top_up.approved": SYSTEM_SWEEP},
    )


def execute_top_up_declined(w: World) -> Expect:
    expect = execute_top_up(w)
    w.settings.CODING_PLANS_TOP_UP_BACKEND = "simulated-decline"
    return Expect(expect.act, {"top_up.declined": SYSTEM_SWEEP})


def record_top_up_outcome(w: World) -> Expect:
    expect = execute_top_up(w)
    attempt = TopUpAttempt.objects.get(status="pending")
    return Expect(
        lambda: billing.record_top_up_outcome(
            attempt_id=attempt.pk, result=ChargeResult(approved=True), now=w.now
        ),
        expect.events,
    )


def add_key(w: World) -> Expect:
    user = w.customer()
    return Expect(
        lambda: byok.add_key(
            user=user, provider_id="minimax", api_key="sk-own-audit-000001", now=w.now
        ),
        {"byok.added": user_actor(user)},
    )


def _own_key(w: World) -> tuple[User, ByokKey]:
    user = w.customer()
    key = byok.add_key(user=user, provider_id="minimax", api_key="sk-own-audit-1", now=w.now)
    return user, key


def update_key_value(w: World) -> Expect:
    subscription = w.subscription()  # replacing the installed entry unlinks it (B3)
    user = subscription.user
    entry = ByokKey.objects.get(user=user)
    return Expect(
        lambda: byok.update_key(
            user=user, key_id=entry.pk, api_key="sk-own-audit-replaced", now=w.now
        ),
        {"byok.replaced": user_actor(user)},
    )


def update_key_enabled(w: World) -> Expect:
    user, key = _own_key(w)
    return Expect(
        lambda: byok.update_key(user=user, key_id=key.pk, enabled=False, now=w.now),
        {"byok.updated": user_actor(user)},
    )


def delete_key(w: World) -> Expect:
    user, key = _own_key(w)
    return Expect(
        lambda: byok.delete_key(user=user, key_id=key.pk, now=w.now),
        {"byok.deleted": user_actor(user)},
    )


def upload_credentials(w: World) -> Expect:
    text = w.lines(2)
    return Expect(
        lambda: inventory_upload.upload_credentials(
            plan_id=PLUS, text=text, actor=w.staff_actor, now=w.now
        ),
        {"inventory.uploaded": w.staff_actor},
    )


def start_upload(w: World) -> Expect:
    text = w.lines(2)
    return Expect(
        lambda: upload_jobs.start_upload(plan_id=PLUS, text=text, user=w.staff, now=w.now),
        {"inventory.upload_started": w.staff_actor},
    )


def process_upload_stored(w: World) -> Expect:
    upload = upload_jobs.start_upload(plan_id=PLUS, text=w.lines(2), user=w.staff, now=w.now)
    return Expect(
        lambda: upload_jobs.process_upload(upload.pk, w.now),
        {"inventory.uploaded": w.staff_actor},
    )


def process_upload_rejected(w: World) -> Expect:
    text = w.lines(1, prefix="invalid-audit")  # the stand-in rejects these keys
    upload = upload_jobs.start_upload(plan_id=PLUS, text=text, user=w.staff, now=w.now)
    return Expect(
        lambda: upload_jobs.process_upload(upload.pk, w.now),
        {"inventory.upload_rejected": w.staff_actor},
    )


def abandon_upload(w: World) -> Expect:
    upload = upload_jobs.start_upload(plan_id=PLUS, text=w.lines(1), user=w.staff, now=w.now)
    return Expect(
        lambda: upload_jobs.abandon_upload(upload.pk, message="broker down", now=w.now),
        {"inventory.upload_rejected": w.staff_actor},
    )


def purge_abandoned_uploads(w: World) -> Expect:
    started = w.now - timedelta(hours=25)
    upload_jobs.start_upload(plan_id=PLUS, text=w.lines(1), user=w.staff, now=started)
    return Expect(
        lambda: upload_jobs.purge_abandoned_uploads(now=w.now),
        {"inventory.upload_expired": "system:cleanup"},
    )


def request_revocation(w: World) -> Expect:
    credential = w.subscription().credential

    def act():
        with transaction.atomic():
            locked = Credential.objects.select_for_update().get(pk=credential.pk)
            inventory.request_revocation(credential=locked, actor=w.staff_actor, now=w.now)

    return Expect(act, {"credential.revocation_requested": w.staff_actor})


def record_revoked(w: World) -> Expect:
    credential = w.queued_credential()
    return Expect(
        lambda: inventory.record_revocation_outcome(
            credential_id=credential.pk,
            outcome="revoked",
            note="",
            actor=w.staff_actor,
            now=w.now,
        ),
        {"credential.revoked": w.staff_actor},
    )


def record_failed(w: World) -> Expect:
    credential = w.queued_credential()
    return Expect(
        lambda: inventory.record_revocation_outcome(
            credential_id=credential.pk,
            outcome="revocation_failed",
            note="MiniMax console down",
            actor=w.staff_actor,
            now=w.now,
        ),
        {"credential.revocation_failed": w.staff_actor},
    )


def rotate_keys(w: World) -> Expect:
    w.stock(PLUS, 1)
    byok.add_key(user=w.customer(), provider_id="minimax", api_key="sk-own-rot-1", now=w.now)
    w.settings.CODING_PLANS_ENCRYPTION_KEYS = [
        Fernet.generate_key().decode(),
        *w.settings.CODING_PLANS_ENCRYPTION_KEYS,
    ]
    return Expect(
        lambda: rotate_encryption_keys(actor="system:command", now=w.now),
        {"encryption.rotated": "system:command"},
    )


def check_low_stock(w: World) -> Expect:
    w.stock(PLUS, 1)  # below Plus's threshold
    return Expect(
        lambda: alerts.check_low_stock(plan_id=PLUS, now=w.now),
        {"inventory.low_stock": "system:stock"},
    )


# Card payments (SPEC M1-M3, M10) run against the embedded localstripe that `make test` starts.


def _card(w: World, user: User, number: str = "4242424242424242") -> str:
    from tests.payments.conftest import api_client, new_card

    return new_card(
        api_client(user),
        {
            "STRIPE_API_BASE": w.settings.STRIPE_API_BASE,
            "STRIPE_PUBLISHABLE_KEY": w.settings.STRIPE_PUBLISHABLE_KEY,
        },
        number,
    )


def pay_by_card(w: World) -> Expect:
    user = w.customer(0)
    pm = _card(w, user)
    return Expect(
        lambda: payments.pay_by_card(
            user=user,
            amount_micros=25_000_000,
            payment_method_id=pm,
            save_card=False,
            actor=user_actor(user),
            now=w.now,
        ),
        {"card_payment.created": user_actor(user), "card_payment.succeeded": user_actor(user)},
    )


def ensure_customer(w: World) -> Expect:
    user = w.customer(0)
    return Expect(
        lambda: payments.ensure_customer(user=user, now=w.now),
        {"stripe_customer.created": user_actor(user)},
    )


def remove_saved_card(w: World) -> Expect:
    user = w.customer(0)
    payment, _ = payments.pay_by_card(
        user=user,
        amount_micros=10_000_000,
        payment_method_id=_card(w, user),
        save_card=True,
        actor=user_actor(user),
        now=w.now - timedelta(minutes=1),
    )
    payments.settle_card(payment_id=payment.pk, now=w.now - timedelta(minutes=1))
    return Expect(
        lambda: payments.remove_saved_card(user=user, now=w.now),
        {"saved_card.removed": user_actor(user)},
    )


def _authenticated_payment(w: World):
    import httpx

    user = w.customer(0)
    payment, secret = payments.pay_by_card(
        user=user,
        amount_micros=30_000_000,
        payment_method_id=_card(w, user, "4000002760003184"),
        save_card=False,
        actor=user_actor(user),
        now=w.now - timedelta(minutes=1),
    )
    httpx.post(
        f"{w.settings.STRIPE_API_BASE}/v1/payment_intents/{payment.payment_intent_id}/_authenticate",
        params={"success": "true"},
        json={"key": w.settings.STRIPE_PUBLISHABLE_KEY, "client_secret": secret},
        timeout=10,
    ).raise_for_status()
    return user, payment


def refresh_payment(w: World) -> Expect:
    user, payment = _authenticated_payment(w)
    return Expect(
        lambda: payments.refresh_payment(
            user=user, payment_id=payment.pk, actor=user_actor(user), now=w.now
        ),
        {"card_payment.succeeded": user_actor(user)},
    )


def handle_webhook(w: World) -> Expect:
    import json

    import stripe

    from tests.payments.conftest import event_for, signature_header

    _user, payment = _authenticated_payment(w)
    sdk = stripe.StripeClient(
        w.settings.STRIPE_SECRET_KEY, base_addresses={"api": w.settings.STRIPE_API_BASE}
    )
    payload = event_for(sdk, "payment_intent.succeeded", payment.payment_intent_id)
    header = signature_header(payload, w.settings.STRIPE_WEBHOOK_SECRET)
    assert json.loads(payload)["type"] == "payment_intent.succeeded"
    return Expect(
        lambda: payments.handle_webhook(payload=payload.encode(), signature=header, now=w.now),
        {"card_payment.succeeded": "system:stripe-webhook"},
    )


def adjust_credits(w: World) -> Expect:
    # SPEC M6: the audit event names the staff member.
    user = w.customer(10)
    return Expect(
        lambda: billing.adjust_credits(
            user=user, amount_micros=-4_000_000, reason="typo", actor=w.staff_actor, now=w.now
        ),
        {"credits.adjusted": w.staff_actor},
    )


def _paid(w: World, amount_micros: int = 25_000_000):
    user = w.customer(0)
    payment, _ = payments.pay_by_card(
        user=user,
        amount_micros=amount_micros,
        payment_method_id=_card(w, user),
        save_card=False,
        actor=user_actor(user),
        now=w.now - timedelta(minutes=1),
    )
    return user, payment


def refund_card_payment(w: World) -> Expect:
    # SPEC M5: a reason is required; the audit event names the staff member.
    _user, payment = _paid(w)
    return Expect(
        lambda: payments.refund_card_payment(
            payment_id=payment.pk,
            amount_micros=10_000_000,
            reason="goodwill",
            actor=w.staff_actor,
            now=w.now,
        ),
        {"refund.created": w.staff_actor, "refund.succeeded": w.staff_actor},
    )


def _pending_refund(w: World, *, age: timedelta):
    """A refund Stripe never answered (nothing listens at the API address while it is made),
    made `age` before `w.now`: it stays pending."""
    _user, payment = _paid(w)
    api_base = w.settings.STRIPE_API_BASE
    w.settings.STRIPE_API_BASE = "http://127.0.0.1:9"
    refund = payments.refund_card_payment(
        payment_id=payment.pk,
        amount_micros=5_000_000,
        reason="pending",
        actor=w.staff_actor,
        now=w.now - age,
    )
    w.settings.STRIPE_API_BASE = api_base
    return refund


def sync_refund(w: World) -> Expect:
    refund = _pending_refund(w, age=timedelta(minutes=1))
    return Expect(
        lambda: payments.sync_refund(refund_id=refund.pk, actor=w.staff_actor, now=w.now),
        {"refund.succeeded": w.staff_actor},
    )


def sync_pending_refunds(w: World) -> Expect:
    # SPEC M5: the hourly task settles a refund left pending, acting as itself.
    _pending_refund(w, age=timedelta(minutes=31))
    return Expect(
        lambda: payments.sync_pending_refunds(now=w.now),
        {"refund.succeeded": payments.REFUND_SYNC_ACTOR},
    )


def charge_top_up(w: World) -> Expect:
    # SPEC M4: the off-session charge acts for the sweep that recorded the attempt.
    user = w.customer(0)
    payment, _ = payments.pay_by_card(
        user=user,
        amount_micros=5_000_000,
        payment_method_id=_card(w, user),
        save_card=True,
        actor=user_actor(user),
        now=w.now - timedelta(minutes=1),
    )
    payments.settle_card(payment_id=payment.pk, now=w.now - timedelta(minutes=1))
    w.settings.CODING_PLANS_TOP_UP_BACKEND = "stripe"
    attempt = TopUpAttempt.objects.create(
        account=CreditAccount.objects.get(user=user),
        subscription_id=10**9,
        due_at=w.now,
        amount_micros=20_000_000,
        backend="stripe",
        created_at=w.now,
    )
    return Expect(
        lambda: payments.charge_top_up(
            attempt_id=attempt.pk, user_id=user.pk, amount_micros=20_000_000, now=w.now
        ),
        {
            "card_payment.created": SYSTEM_SWEEP,
            "card_payment.succeeded": SYSTEM_SWEEP,
            "top_up.approved": SYSTEM_SWEEP,
        },
    )


def forfeit_balance(w: World) -> Expect:
    user = w.customer(30)

    def act():
        with transaction.atomic():
            return billing.forfeit_balance(user_id=user.pk, actor=w.staff_actor, now=w.now)

    return Expect(act, {"credits.forfeited": w.staff_actor})


# Stock health and dead sold keys (SPEC H1-H4), against the stand-in.

HEALTH = "system:stock-health"


def _fresh_stock(w: World, n: int = 1) -> list[str]:
    keys = w.stock(PLUS, n)
    w.now = timezone.now().replace(microsecond=0) + timedelta(seconds=1)  # after the upload
    return keys


def _quarantined(w: World) -> tuple[str, Credential]:
    (key,) = _fresh_stock(w)
    w.standin.state.revoke(key)
    health.run_stock_health(now=w.now, rps=1000)
    w.standin.state.restore(key)
    return key, Credential.objects.get(state="quarantined")


def run_stock_health(w: World) -> Expect:
    (key,) = _fresh_stock(w)
    w.standin.state.revoke(key)
    return Expect(
        lambda: health.run_stock_health(now=w.now, rps=1000),
        {"credential.quarantined": HEALTH},
    )


def retest_passes(w: World) -> Expect:
    _key, credential = _quarantined(w)
    return Expect(
        lambda: health.retest_credential(
            credential_id=credential.pk, actor=w.staff_actor, now=w.now
        ),
        {"credential.returned_to_stock": w.staff_actor},
    )


def retest_fails(w: World) -> Expect:
    key, credential = _quarantined(w)
    w.standin.state.revoke(key)
    return Expect(
        lambda: health.retest_credential(
            credential_id=credential.pk, actor=w.staff_actor, now=w.now
        ),
        {"credential.retest_failed": w.staff_actor},
    )


def retire_credential(w: World) -> Expect:
    _fresh_stock(w)
    credential = Credential.objects.get(state="available")
    return Expect(
        lambda: inventory.retire_credential(
            credential_id=credential.pk, note="bad batch", actor=w.staff_actor, now=w.now
        ),
        {"credential.retired": w.staff_actor},
    )


def _flagged(w: World, *, at=None) -> Subscription:
    subscription = w.subscription()
    assert replacement.flag_credential_problem(
        subscription_id=subscription.pk,
        key_fingerprint=subscription.credential.fingerprint,
        source="gateway",
        now=at or w.now,
    )
    return subscription


def flag_credential_problem(w: World) -> Expect:
    subscription = w.subscription()
    return Expect(
        lambda: replacement.flag_credential_problem(
            subscription_id=subscription.pk,
            key_fingerprint=subscription.credential.fingerprint,
            source="gateway",
            now=w.now,
        ),
        {"subscription.credential_problem": HEALTH},
    )


def replace_by_staff(w: World) -> Expect:
    subscription = w.subscription()
    w.stock(PLUS, 1)
    return Expect(
        lambda: replacement.replace_credential(
            subscription_id=subscription.pk, actor=w.staff_actor, now=w.now
        ),
        {"subscription.credential_replaced": w.staff_actor},
    )


def replace_automatically(w: World) -> Expect:
    subscription = _flagged(w)
    w.stock(PLUS, 1)
    return Expect(
        lambda: replacement.replace_or_alert(subscription_id=subscription.pk, now=w.now),
        {"subscription.credential_replaced": HEALTH},
    )


def replace_on_restock(w: World) -> Expect:
    _flagged(w)
    w.stock(PLUS, 1)
    return Expect(
        lambda: replacement.replace_flagged(plan_id=PLUS, now=w.now),
        {"subscription.credential_replaced": HEALTH},
    )


def alert_staff_no_stock(w: World) -> Expect:
    subscription = _flagged(w)
    return Expect(
        lambda: replacement.alert_staff_no_stock(subscription_id=subscription.pk, now=w.now),
        {"subscription.credential_problem_no_stock": HEALTH},
    )


def service_credit(w: World) -> Expect:
    subscription = _flagged(w, at=w.now - timedelta(hours=25))
    return Expect(
        lambda: replacement.grant_service_credit(subscription_id=subscription.pk, now=w.now),
        {"subscription.service_credit": HEALTH},
    )


def review_credential_problems(w: World) -> Expect:
    _flagged(w, at=w.now - timedelta(hours=25))
    return Expect(
        lambda: replacement.review_credential_problems(now=w.now),
        {"subscription.credential_problem_no_stock": HEALTH, "subscription.service_credit": HEALTH},
    )


AUDITED: dict[str, list[Callable[[World], Expect]]] = {
    "inventory.health.run_stock_health": [run_stock_health],
    "inventory.health.retest_credential": [retest_passes, retest_fails],
    "inventory.services.retire_credential": [retire_credential],
    "subscriptions.replacement.flag_credential_problem": [flag_credential_problem],
    "subscriptions.replacement.replace_credential": [replace_by_staff],
    "subscriptions.replacement.replace_or_alert": [replace_automatically],
    "subscriptions.replacement.replace_flagged": [replace_on_restock],
    "subscriptions.replacement.alert_staff_no_stock": [alert_staff_no_stock],
    "subscriptions.replacement.grant_service_credit": [service_credit],
    "subscriptions.replacement.review_credential_problems": [review_credential_problems],
    "subscriptions.purchase.purchase_plan": [purchase],
    "subscriptions.intents.save_intent": [save_intent],
    "subscriptions.intents.withdraw_intent": [withdraw_intent],
    "subscriptions.intents.notify_availability": [notify_availability],
    "subscriptions.sweep.run_billing_sweep": [sweep(o) for o in SWEEP_OUTCOMES],
    "subscriptions.sweep.process_due_subscription": [one_due(o) for o in SWEEP_OUTCOMES],
    "subscriptions.actions.cancel_at_period_end": [cancel_at_period_end],
    "subscriptions.actions.resume_subscription": [resume_subscription],
    "subscriptions.actions.terminate_subscription": [terminate_subscription],
    "subscriptions.actions.end_subscription": [end_subscription],
    "accounts.services.delete_account": [delete_account_by_customer, delete_account_by_staff],
    "accounts.services.create_user": [
        create_user_by_sign_up,
        create_user_by_operator,
        create_user_unverified,
    ],
    "accounts.services.verify_email": [verify_email],
    "accounts.services.change_email": [change_email],
    "accounts.services.set_password": [set_password_by_change, set_password_by_reset],
    "accounts.services.set_notification_preferences": [set_notification_preferences],
    "accounts.tokens.create_api_token": [create_api_token],
    "accounts.tokens.revoke_api_token": [revoke_api_token],
    "billing.services.grant_credits": [grant_credits],
    "billing.services.set_auto_top_up": [set_auto_top_up],
    "billing.services.execute_top_up": [execute_top_up, execute_top_up_declined],
    "billing.services.record_top_up_outcome": [record_top_up_outcome],
    "billing.services.adjust_credits": [adjust_credits],
    "payments.services.refund_card_payment": [refund_card_payment],
    "payments.services.sync_refund": [sync_refund],
    "payments.services.sync_pending_refunds": [sync_pending_refunds],
    "payments.services.charge_top_up": [charge_top_up],
    "byok.services.add_key": [add_key],
    "byok.services.update_key": [update_key_value, update_key_enabled],
    "byok.services.delete_key": [delete_key],
    "inventory.upload.upload_credentials": [upload_credentials],
    "inventory.upload_jobs.start_upload": [start_upload],
    "inventory.upload_jobs.process_upload": [process_upload_stored, process_upload_rejected],
    "inventory.upload_jobs.abandon_upload": [abandon_upload],
    "inventory.services.request_revocation": [request_revocation],
    "inventory.services.record_revocation_outcome": [record_revoked, record_failed],
    "adminops.keyrotation.rotate_encryption_keys": [rotate_keys],
    "inventory.alerts.check_low_stock": [check_low_stock],
    "inventory.upload_jobs.purge_abandoned_uploads": [purge_abandoned_uploads],
    "billing.services.forfeit_balance": [forfeit_balance],
    "payments.services.pay_by_card": [pay_by_card],
    "payments.services.ensure_customer": [ensure_customer],
    "payments.services.remove_saved_card": [remove_saved_card],
    "payments.services.refresh_payment": [refresh_payment],
    "payments.services.handle_webhook": [handle_webhook],
}

INSIDE_A_CALLER = "runs only inside {}'s transaction, whose audit event records the change"
NOT_STATE_CHANGES: dict[str, str] = {
    "accounts.tokens.bearer_lookup": (
        "a read; it only refreshes the token's last-used time (at most once a minute)"
    ),
    "accounts.tokens.bearer_token": "pure function",
    "accounts.tokens.bearer_lookup_async": "bearer_lookup on the event loop: the same read",
    "accounts.tokens.revoke_all_tokens": INSIDE_A_CALLER.format("delete_account"),
    "byok.services.delete_account_keys": INSIDE_A_CALLER.format("delete_account"),
    "byok.services.remove_installed_entry": INSIDE_A_CALLER.format("end_subscription")
    + "; it also writes its own byok.installed_entry_removed event",
    "inventory.services.forget_holder": INSIDE_A_CALLER.format("delete_account"),
    "subscriptions.actions.end_account_subscriptions": INSIDE_A_CALLER.format("delete_account")
    + "; each subscription it ends writes subscription.ended",
    "accounts.tokens.hash_token": "pure function",
    "accounts.tokens.authenticate_token": (
        "a read; it only refreshes the token's last-used time (at most once a minute)"
    ),
    "billing.services.open_credit_account": (
        "creates the empty credit account inside create_user (user.created), or lazily for an "
        "account made before; moves no money and changes no setting"
    ),
    "billing.services.post_entry": INSIDE_A_CALLER.format("a purchase, renewal, grant or top-up")
    + "; the ledger entry carries the actor too",
    "billing.services.start_top_up": INSIDE_A_CALLER.format("the sweep (subscription.past_due)")
    + "; its outcome is audited by record_top_up_outcome",
    "billing.services.charge_top_up_after_commit": (
        "queues the processor call for after the caller's commit; the outcome is audited by "
        "record_top_up_outcome"
    ),
    "inventory.services.claim_credential": INSIDE_A_CALLER.format(
        "purchase_plan (credential.assigned)"
    ),
    "inventory.services.claim_params": "pure function: the claim statement's parameters",
    "inventory.services.claimed_credential": (
        "reads a claim statement's result row; the claim itself is audited by purchase_plan "
        "(credential.assigned)"
    ),
    "inventory.services.sanitize_note": "pure function",
    "inventory.services.decrypted_key": "a read, at the moment of an upstream call",
    "inventory.upload.count_credential_lines": "pure function",
    "inventory.upload.line_limit_message": "pure function",
    "inventory.services.revocation_note_missing": "pure function",
    "byok.services.decrypted_key": "a read, at the moment of an upstream call",
    "byok.services.check_stored_key": (
        "a read: one non-mutating upstream call; a rejected installed key is announced, and "
        "flag_credential_problem audits the flag"
    ),
    "inventory.health.max_rps": "a setting read",
    "adminops.health.sweep_health": "a read",
    "adminops.health.stock_health": "a read",
    "inventory.services.lock_credential": "a row lock and read inside a caller's transaction",
    "byok.services.rekey_installed_entry": INSIDE_A_CALLER.format(
        "replace_credential (subscription.credential_replaced)"
    ),
    "billing.services.grant_service_credit": INSIDE_A_CALLER.format(
        "replace_credential or grant_service_credit (subscription.service_credit)"
    )
    + "; the ledger entry carries the actor too",
    "subscriptions.replacement.service_credit_amount": "pure function",
    "byok.services.spend_key_budget": "a rate-limit counter in the cache; no data changes",
    "byok.services.installed_entry_cte": (
        "an SQL fragment: purchase_plan writes it in its activation (subscription.purchased)"
    ),
    "byok.services.installed_entry_params": "pure function: the entry's encrypted key and hint",
    "accounts.services.deletion_refusal": "a read: the deletion policy, asked before deleting",
    "subscriptions.actions.lock_subscription": (
        "a row lock and read inside a caller's transaction"
    ),
    "subscriptions.actions.audit_state": "pure function: a subscription's audited fields",
    "subscriptions.actions.apply_changes": (
        "sets a transition's values on the object in memory, after its caller wrote them"
    ),
    "subscriptions.actions.save_transition": INSIDE_A_CALLER.format(
        "cancel_at_period_end, resume_subscription or the sweep"
    )
    + "; it writes the transition's audit event itself",
    "subscriptions.notifications.email_after_commit": (
        "queues a best-effort e-mail for after the caller's commit; changes no data"
    ),
    "subscriptions.notifications.payment_needed": (
        "queues the e-mail of a change the sweep audits (subscription.past_due)"
    ),
    # Issue 19: e-mails change no domain state; each send is recorded where it matters.
    "accounts.services.new_email_for": (
        "a read: checks the address asked for; the change is made (and audited) by change_email"
    ),
    "accounts.emails.send_verification": "sends the verification link; changes no data",
    "accounts.emails.send_password_reset": "sends the reset link; changes no data",
    "accounts.emails.send_email_change_link": "sends the change link; changes no data",
    "accounts.emails.send_email_changed_notice": "sends the notice; changes no data",
    "subscriptions.emails.event_key": "pure function",
    "subscriptions.emails.dispatch": "queues a recorded e-mail's sending; changes no data",
    "subscriptions.emails.record": (
        "e-mail bookkeeping inside the caller's audited change: the CustomerEmail row (the "
        "record itself) and an on-commit hook that queues its sending"
    ),
    "subscriptions.emails.record_cte": (
        "SQL text for a caller's statement: the renewal, which writes subscription.renewed, "
        "records its receipt's CustomerEmail row (itself the record) with it"
    ),
    "subscriptions.emails.record_params": "pure function: record_cte's parameters",
    "subscriptions.emails.deliver_after_commit": (
        "registers an on-commit hook inside the caller's change that queues a recorded e-mail; "
        "changes no data"
    ),
    "subscriptions.emails.batched_delivery": "queues recorded e-mails in batches; changes no data",
    "subscriptions.emails.send_customer_emails": (
        "sends recorded e-mails; only their CustomerEmail rows (the record) change"
    ),
    "subscriptions.emails.queue": (
        "e-mail bookkeeping after the audited change commits: the CustomerEmail row is itself "
        "the record (kind, event, subscription, time)"
    ),
    "subscriptions.emails.send_customer_email": (
        "sends a recorded e-mail; only its CustomerEmail row (the record) changes"
    ),
    "subscriptions.emails.compose": "a read: the message for a recorded e-mail",
    "subscriptions.emails.reminder_candidates": "a read (a queryset)",
    "subscriptions.emails.sweep_emails": (
        "queues reminders and unsent e-mails (CustomerEmail rows); counted in the SweepRun"
    ),
    "subscriptions.emails.requeue_unsent": "queues unsent e-mails again; changes no data",
    "inventory.alerts.staff_recipients": "a read",
    "inventory.alerts.stock_check_needed": "pure function",
    "inventory.alerts.check_after_commit": (
        "registers check_low_stock (audited) after the caller's change commits"
    ),
    "inventory.alerts.rearm_low_stock": (
        "alert bookkeeping after a restock (clears the sent flag); the restock itself is "
        "audited by upload_credentials"
    ),
    "inventory.alerts.daily_report_text": "a read",
    "inventory.alerts.send_daily_report": "sends the report e-mail; changes no data",
    "inventory.alerts.send_low_stock_email": (
        "sends the e-mail for an alert check_low_stock armed and audited (inventory.low_stock); "
        "only marks it sent"
    ),
    "gateway.services.resolve_route": "a read",
    "gateway.services.split_model": "pure function",
    "billing.services.lock_credit_account": "a row lock and read inside a caller's transaction",
    "billing.services.account_lock_cte": (
        "SQL text: lock_credit_account's row lock for a caller's statement (lock_subscription)"
    ),
    "billing.services.entry_ctes": (
        "SQL text for a caller's statement; the purchase that runs it writes its audit events"
    ),
    "gateway.services.bearer_caller": (
        "a read (token and key in one query); notes the token's last use like authenticate_token"
    ),
    "gateway.services.bearer_caller_async": "bearer_caller on the event loop: the same read",
    "gateway.services.queue_usage": "record_usage on the event loop: the same row, batched",
    "gateway.services.flush_usage": "writes the usage rows queue_usage holds (server shutdown)",
    "accounts.tokens.touch_token": (
        "notes a token's last use at most once a minute: bookkeeping, not an audited change"
    ),
    "gateway.services.record_usage": (
        "usage metering: the GatewayRequest row written per API call is itself the record "
        "(user, subscription, tokens, time); an audit event per call would swamp the trail"
    ),
    "gateway.services.usage_in_period": "a read",
    "gateway.services.usage_from_sse": "pure function",
    "billing.services.grant_card_payment": INSIDE_A_CALLER.format(
        "a card payment's outcome (card_payment.succeeded)"
    ),
    "payments.services.parse_amount": "pure function",
    "payments.services.decline_message": "pure function",
    "payments.services.intent_client_secret": "a read at Stripe for the confirm page",
    "payments.services.create_setup_intent": (
        "creates a SetupIntent at Stripe only; a Stripe Customer made on the way is audited by "
        "ensure_customer"
    ),
    "payments.services.settle_card": (
        "after-commit follow-up of a payment's outcome: detaches an unsaved card at Stripe; "
        "saving one writes saved_card.set (proven by remove_saved_card's set-up)"
    ),
    "payments.services.send_receipt": "sends the receipt e-mail once; notes when it was sent",
    # issue 16 (SPEC M4-M6)
    "billing.services.turn_off_auto_top_up": INSIDE_A_CALLER.format("remove_saved_card")
    + "; it also writes its own credits.auto_top_up_changed event",
    "billing.services.top_up_blocker": "a read: why the sweep started no attempt",
    "billing.services.apply_top_up_outcome": INSIDE_A_CALLER.format(
        "record_top_up_outcome or a card payment's outcome"
    )
    + "; it writes its own top_up.<status> event (proven by execute_top_up, charge_top_up)",
    "billing.services.debit_refund": INSIDE_A_CALLER.format("refund_card_payment (refund.created)"),
    "billing.services.reverse_refund": INSIDE_A_CALLER.format(
        "a refund Stripe failed (refund.failed)"
    ),
    "payments.services.intent_action": "a read at Stripe for the confirm page",
    "payments.services.can_charge_top_up": "a read: whether a saved card exists",
    "payments.services.send_refund_email": ("sends the refund e-mail once; notes when it was sent"),
}

CASES = [
    pytest.param(name, scenario, id=f"{name.rsplit('.', 1)[1]}-{scenario.__name__}")
    for name, scenarios in AUDITED.items()
    for scenario in scenarios
]


def test_every_service_is_classified():
    discovered = discover_services()
    classified = set(AUDITED) | set(NOT_STATE_CHANGES)
    assert not set(AUDITED) & set(NOT_STATE_CHANGES)
    unknown = sorted(discovered - classified)
    assert not unknown, (
        f"New service function(s) {unknown}: add each to AUDITED with a scenario proving it "
        "writes an audit event (SPEC O1), or to NOT_STATE_CHANGES with the reason."
    )
    gone = sorted(classified - discovered)
    assert not gone, f"Listed but no longer found (renamed or removed?): {gone}"
    # The brief's list of state-changing services, all proven here.
    assert len(AUDITED) >= 27


@pytest.fixture
def world(make_user, stock, settings, standin):
    settings.CODING_PLANS_TOP_UP_BACKEND = "simulated-approve"
    w = World(make_user, stock, settings)
    w.standin = standin
    return w


@pytest.mark.parametrize(("name", "scenario"), CASES)
def test_service_writes_an_audit_event_with_the_right_actor(name, scenario, world):
    expect = scenario(world)
    before = AuditEvent.objects.aggregate(last=Max("id"))["last"] or 0
    result = expect.act()
    events = list(AuditEvent.objects.filter(id__gt=before).order_by("id"))
    assert events, f"{name} wrote no audit event"
    written = {(e.event_type, e.actor) for e in events}
    for event_type, actor in expect.events.items():
        actor = actor(result) if callable(actor) else actor
        assert (event_type, actor) in written, (name, event_type, actor, written)
    # The event's time is the service's clock (one clock, passed down), not another now().
    assert {e.created_at for e in events} == {world.now}, name
    # An actor is always one of the three kinds, never blank.
    assert all(e.actor.split(":", 1)[0] in {"user", "staff", "system"} for e in events)
    assert all(e.actor.split(":", 1)[1] for e in events)


# --- the event is written in the service's own transaction ------------------------------------


def _state_of(w: World) -> list:
    return [
        sorted(Subscription.objects.values_list("id", "status")),
        sorted(Credential.objects.values_list("id", "state", "revocation_attempts")),
        sorted(CreditAccount.objects.values_list("id", "balance_micros")),
        sorted(ByokKey.objects.values_list("id", "enabled")),
        sorted(User.objects.values_list("id", "email", "is_active")),
    ]


@pytest.mark.parametrize(
    "scenario",
    [terminate_subscription, delete_account_by_staff, grant_credits, record_revoked, purchase],
    ids=lambda s: s.__name__,
)
def test_a_failing_audit_write_rolls_the_change_back(scenario, world, monkeypatch):
    expect = scenario(world)
    before = _state_of(world)

    # A real database fault: the audit table refuses inserts (a trigger, dropped with the
    # test's transaction).
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION pg_temp.refuse_audit() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'audit table unavailable'; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON adminops_auditevent "
            "FOR EACH ROW EXECUTE FUNCTION pg_temp.refuse_audit()"
        )
    with pytest.raises(DatabaseError, match="audit table unavailable"):
        expect.act()
    assert _state_of(world) == before


def test_the_sweep_acts_as_system_sweep_whoever_starts_it(world):
    # Beat or the command: the run records its trigger; the events say system:sweep (O1, O2).
    _renewable(world)
    run = billing_sweep.run_billing_sweep(now=world.now, trigger="command")
    assert run.trigger == "command"
    assert set(AuditEvent.objects.filter(created_at=world.now).values_list("actor", flat=True)) == {
        SYSTEM_SWEEP
    }


def test_an_admin_upload_keeps_one_subject_from_start_to_outcome(world):
    upload = upload_jobs.start_upload(
        plan_id=PLUS, text=world.lines(2), user=world.staff, now=world.now
    )
    upload_jobs.process_upload(upload.pk, world.now)
    events = AuditEvent.objects.filter(
        subject_type="inventory.inventoryupload", subject_id=str(upload.pk)
    )
    assert set(events.values_list("event_type", flat=True)) == {
        "inventory.upload_started",
        "inventory.uploaded",
    }
    # A command upload has no upload row: the plan is the subject.
    inventory_upload.upload_credentials(
        plan_id=PLUS, text=world.lines(1), actor="system:command", now=world.now
    )
    assert AuditEvent.objects.filter(
        event_type="inventory.uploaded", subject_type="inventory.plan", subject_id=PLUS
    ).exists()
