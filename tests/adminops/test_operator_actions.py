"""Operator actions with guard rails (SPEC L6, D1, O1): terminating a subscription and deleting
an account from the admin ask for confirmation, say what will happen, call the service as
`staff:<id>`, and report the result; the change pages link to the audit trail."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.core import mail
from django.test import Client
from django.utils import timezone

from accounts.models import ApiToken, User
from accounts.tokens import create_api_token
from adminops.models import AuditEvent
from adminops.roles import SUPPORT
from byok.models import ByokKey
from byok.services import update_key
from inventory.models import Credential
from subscriptions.actions import terminate_subscription
from subscriptions.intents import save_intent
from subscriptions.models import AvailabilityIntent, Subscription
from subscriptions.purchase import purchase_plan
from tests.adminops.conftest import MAX, PLUS

pytestmark = pytest.mark.django_db

SUBSCRIPTIONS = "/admin/subscriptions/subscription/"
USERS = "/admin/accounts/user/"


def terminate_url(subscription_id: int) -> str:
    return f"{SUBSCRIPTIONS}{subscription_id}/terminate/"


def delete_url(user_id: int) -> str:
    return f"{USERS}{user_id}/delete-account/"


@pytest.fixture
def buy(make_user, stock):
    def make(plan_id: str = PLUS, user=None) -> Subscription:
        user = user or make_user(credits_usd=100)
        stock(plan_id, 1)
        outcome = purchase_plan(
            user=user, plan_id=plan_id, idempotency_key=f"k-{plan_id}", now=timezone.now()
        )
        return Subscription.objects.select_related("user").get(pk=outcome.subscription_id)

    return make


@pytest.fixture
def support(make_staff, client_for):
    """A staff member in the Support group (the role that terminates and deletes)."""
    user = make_staff()
    user.groups.add(Group.objects.get(name=SUPPORT))
    user = User.objects.get(pk=user.pk)
    return user, client_for(user)


# --- terminate a subscription (L6) ------------------------------------------------------------


def test_change_page_links_to_termination_and_audit(support, buy):
    _staff, client = support
    subscription = buy()
    html = client.get(f"{SUBSCRIPTIONS}{subscription.pk}/change/").content.decode()
    assert terminate_url(subscription.pk) in html
    assert (
        f"/admin/adminops/auditevent/?subject_type=subscriptions.subscription"
        f"&amp;subject_id={subscription.pk}"
    ) in html
    assert f"subject_type=inventory.credential&amp;subject_id={subscription.credential_id}" in html


def test_terminate_confirmation_says_what_will_happen_and_changes_nothing(support, buy):
    _staff, client = support
    subscription = buy()
    page = client.get(terminate_url(subscription.pk))
    assert page.status_code == 200
    html = page.content.decode()
    assert "ends access now" in html
    assert "removes the installed BYOK entry if unchanged" in html
    assert "queues the credential for revocation" in html
    assert subscription.user.email in html
    assert "Linked, unchanged" in html and 'name="csrfmiddlewaretoken"' in html
    subscription.refresh_from_db()
    assert subscription.status == "active"
    assert not AuditEvent.objects.filter(event_type="subscription.ended").exists()


def test_confirmed_termination_calls_the_service_as_staff_and_reports(support, buy):
    staff, client = support
    subscription = buy()
    mail.outbox.clear()
    done = client.post(terminate_url(subscription.pk), {"confirm": "yes"}, follow=True)
    assert done.redirect_chain[-1][0] == f"{SUBSCRIPTIONS}{subscription.pk}/change/"
    html = done.content.decode()
    assert f"Subscription #{subscription.pk} terminated (administrative termination)" in html
    assert "its installed BYOK entry was removed" in html
    assert f"credential #{subscription.credential_id} is queued for revocation" in html
    subscription.refresh_from_db()
    assert subscription.status == "canceled"
    assert subscription.cancellation_reason == "administrative_termination"
    assert not ByokKey.objects.filter(user=subscription.user).exists()
    credential = Credential.objects.get(pk=subscription.credential_id)
    assert credential.state == "revocation_pending" and credential.encrypted_key == ""
    actors = set(
        AuditEvent.objects.filter(
            event_type__in=[
                "subscription.ended",
                "credential.revocation_requested",
                "byok.installed_entry_removed",
            ]
        ).values_list("actor", flat=True)
    )
    assert actors == {f"staff:{staff.pk}"}
    # No live plan, no termination link any more.
    assert terminate_url(subscription.pk) not in done.content.decode()


def test_a_replaced_entry_is_kept_and_the_page_says_so(support, buy):
    _staff, client = support
    subscription = buy()
    entry = ByokKey.objects.get(user=subscription.user)
    update_key(
        user=subscription.user, key_id=entry.pk, api_key="sk-own-replaced-12345", now=timezone.now()
    )
    assert "None linked" in client.get(terminate_url(subscription.pk)).content.decode()
    done = client.post(terminate_url(subscription.pk), {"confirm": "yes"}, follow=True)
    assert "BYOK is unchanged" in done.content.decode()
    assert ByokKey.objects.filter(pk=entry.pk).exists()


def test_already_canceled_is_shown_clearly_and_nothing_changes(support, buy):
    _staff, client = support
    subscription = buy()
    terminate_subscription(subscription_id=subscription.pk, actor="staff:0", now=timezone.now())
    page = client.get(terminate_url(subscription.pk)).content.decode()
    assert "already canceled" in page and "Yes, terminate now" not in page
    before = AuditEvent.objects.count()
    done = client.post(terminate_url(subscription.pk), {"confirm": "yes"}, follow=True)
    html = done.content.decode()
    assert f"Subscription #{subscription.pk} was not terminated" in html
    assert "already canceled" in html
    assert AuditEvent.objects.count() == before


def test_terminating_between_confirmation_and_post_reports_already_canceled(support, buy):
    # The confirmation page was shown while the plan was live; a sweep ended it meanwhile.
    staff, client = support
    subscription = buy()
    assert "Yes, terminate now" in client.get(terminate_url(subscription.pk)).content.decode()
    terminate_subscription(
        subscription_id=subscription.pk, actor="system:sweep", now=timezone.now()
    )
    done = client.post(terminate_url(subscription.pk), {"confirm": "yes"}, follow=True)
    assert "already canceled" in done.content.decode()
    subscription.refresh_from_db()
    assert subscription.cancellation_reason == "administrative_termination"
    assert not AuditEvent.objects.filter(
        actor=f"staff:{staff.pk}", subject_type="subscriptions.subscription"
    ).exists()


def test_post_without_confirmation_only_shows_the_confirmation(support, buy):
    _staff, client = support
    subscription = buy()
    page = client.post(terminate_url(subscription.pk), {})
    assert page.status_code == 200 and "Yes, terminate now" in page.content.decode()
    subscription.refresh_from_db()
    assert subscription.status == "active"


def test_list_action_terminates_several_after_one_confirmation(support, buy, make_user):
    _staff, client = support
    first = buy(PLUS)
    second = buy(MAX)
    ended = buy(PLUS, user=make_user(credits_usd=100))
    terminate_subscription(subscription_id=ended.pk, actor="staff:0", now=timezone.now())
    listing = client.get(SUBSCRIPTIONS).content.decode()
    assert 'value="terminate_selected"' in listing
    step = client.post(
        SUBSCRIPTIONS,
        {"action": "terminate_selected", "_selected_action": [first.pk, second.pk, ended.pk]},
    )
    assert step.status_code == 302
    confirm = client.get(step["Location"])
    html = confirm.content.decode()
    assert "Terminate 3 subscriptions" in html and "these 2 subscriptions" in html
    assert "Already canceled" in html
    done = client.post(
        step["Location"].split("?")[0],
        {"ids": f"{first.pk},{second.pk},{ended.pk}", "confirm": "yes"},
        follow=True,
    )
    messages = [str(m) for m in done.context["messages"]]
    assert sum("terminated (administrative termination)" in m for m in messages) == 2
    assert any(f"#{ended.pk} was not terminated" in m for m in messages)
    assert set(
        Subscription.objects.filter(pk__in=[first.pk, second.pk]).values_list("status", flat=True)
    ) == {"canceled"}


def test_termination_post_needs_csrf(support, buy):
    staff, _ = support
    subscription = buy()
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff)
    assert client.post(terminate_url(subscription.pk), {"confirm": "yes"}).status_code == 403
    subscription.refresh_from_db()
    assert subscription.status == "active"


# --- delete an account (D1) -------------------------------------------------------------------


@pytest.fixture
def customer_with_everything(make_user, buy):
    user = make_user("leaving@example.com", credits_usd=100, full_name="Lea Ving")
    subscription = buy(PLUS, user=user)
    save_intent(user=user, plan_id=MAX, now=timezone.now())
    create_api_token(user=user, now=timezone.now())
    return user, subscription


def test_user_page_links_to_deletion_and_audit(support, customer_with_everything):
    _staff, client = support
    user, _ = customer_with_everything
    html = client.get(f"{USERS}{user.pk}/change/").content.decode()
    assert delete_url(user.pk) in html
    assert f"subject_type=accounts.user&amp;subject_id={user.pk}" in html
    assert f"actor=user%3A{user.pk}" in html


def test_delete_confirmation_lists_the_consequences(support, customer_with_everything):
    _staff, client = support
    user, subscription = customer_with_everything
    page = client.get(delete_url(user.pk))
    assert page.status_code == 200
    html = page.content.decode()
    for text in (
        "Plans end now",
        "All BYOK keys and intents are deleted",
        "Credentials are queued for revocation",
        "Personal data is erased",
        f"#{subscription.pk}</a> {PLUS}",
        "1 BYOK key (0 of them the customer's own) and 1 notify-me intent",
        "1 API token",
        user.email,
    ):
        assert text in html, text
    user.refresh_from_db()
    assert user.deleted_at is None


def test_delete_needs_the_email_typed_then_calls_the_service_as_staff(
    support, customer_with_everything
):
    staff, client = support
    user, subscription = customer_with_everything
    wrong = client.post(delete_url(user.pk), {"confirm": "yes", "confirm_email": "x@example.com"})
    assert wrong.status_code == 200 and "Type the account" in wrong.content.decode()
    user.refresh_from_db()
    assert user.deleted_at is None

    done = client.post(
        delete_url(user.pk),
        {"confirm": "yes", "confirm_email": "Leaving@Example.com"},
        follow=True,
    )
    assert done.redirect_chain[-1][0] == f"{USERS}{user.pk}/change/"
    assert f"Account #{user.pk} deleted: 1 plan ended" in done.content.decode()
    user.refresh_from_db()
    assert user.deleted_at is not None and user.email.endswith("@deleted.invalid")
    assert user.full_name == "" and not user.is_active
    subscription.refresh_from_db()
    assert (subscription.status, subscription.cancellation_reason) == (
        "canceled",
        "account_deleted",
    )
    assert not ByokKey.objects.filter(user=user).exists()
    assert not AvailabilityIntent.objects.filter(user=user).exists()
    assert not ApiToken.objects.filter(user=user, revoked_at__isnull=True).exists()
    assert Credential.objects.get(pk=subscription.credential_id).state == "revocation_pending"
    event = AuditEvent.objects.get(event_type="account.deleted", subject_id=str(user.pk))
    assert event.actor == f"staff:{staff.pk}"
    assert "leaving" not in str(event.old_values) + str(event.new_values)
    # Deleted: no second deletion offered, and a direct attempt says so.
    assert delete_url(user.pk) not in done.content.decode()
    again = client.get(delete_url(user.pk)).content.decode()
    assert "already deleted" in again and "Yes, delete this account" not in again


def test_delete_refuses_own_account_and_staff_accounts_for_non_superusers(
    support, make_staff, superuser, client_for
):
    staff, client = support
    own = client.get(delete_url(staff.pk)).content.decode()
    assert "cannot delete your own account" in own
    other_staff = make_staff()
    page = client.get(delete_url(other_staff.pk)).content.decode()
    assert "Only a superuser can delete a staff account" in page
    client.post(delete_url(other_staff.pk), {"confirm": "yes", "confirm_email": other_staff.email})
    other_staff.refresh_from_db()
    assert other_staff.deleted_at is None and other_staff.is_staff
    # A superuser may.
    done = client_for(superuser).post(
        delete_url(other_staff.pk),
        {"confirm": "yes", "confirm_email": other_staff.email},
        follow=True,
    )
    assert "deleted" in done.content.decode()
    other_staff.refresh_from_db()
    assert other_staff.deleted_at is not None


def test_user_list_action_opens_the_confirmation_for_one_account(support, make_user):
    _staff, client = support
    first, second = make_user(), make_user()
    listing = client.get(USERS).content.decode()
    assert 'value="delete_selected_account"' in listing
    step = client.post(USERS, {"action": "delete_selected_account", "_selected_action": [first.pk]})
    assert step["Location"] == delete_url(first.pk)
    two = client.post(
        USERS,
        {"action": "delete_selected_account", "_selected_action": [first.pk, second.pk]},
        follow=True,
    )
    assert "Select exactly one account" in two.content.decode()


def test_delete_post_needs_csrf(support, make_user):
    staff, _ = support
    user = make_user()
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff)
    response = client.post(delete_url(user.pk), {"confirm": "yes", "confirm_email": user.email})
    assert response.status_code == 403
    user.refresh_from_db()
    assert user.deleted_at is None


# --- credential page and the audit trail of access changes ------------------------------------


def test_credential_page_links_to_its_events_and_the_outcome_form(operator, buy):
    subscription = buy()
    credential_url = f"/admin/inventory/credential/{subscription.credential_id}/change/"
    html = operator.get(credential_url).content.decode()
    assert f"subject_type=inventory.credential&amp;subject_id={subscription.credential_id}" in html
    assert f"subject_type=subscriptions.subscription&amp;subject_id={subscription.pk}" in html
    assert "record-revocation" not in html
    terminate_subscription(subscription_id=subscription.pk, actor="staff:0", now=timezone.now())
    html = operator.get(credential_url).content.decode()
    assert f"/admin/inventory/credential/{subscription.credential_id}/record-revocation/" in html


def test_audit_links_hidden_without_audit_permission(make_staff, client_for, buy):
    client = client_for(make_staff("subscriptions.view_subscription"))
    subscription = buy()
    html = client.get(f"{SUBSCRIPTIONS}{subscription.pk}/change/").content.decode()
    assert "/admin/adminops/auditevent/" not in html
    assert terminate_url(subscription.pk) not in html


def test_access_changes_in_the_admin_are_audited(operator, superuser, make_user):
    user = make_user("promoted@example.com", full_name="Pro Moted")
    support = Group.objects.get(name=SUPPORT)
    response = operator.post(
        f"{USERS}{user.pk}/change/",
        {
            "full_name": "Renamed Person",
            "is_active": "on",
            "is_staff": "on",
            "groups": [support.pk],
        },
    )
    assert response.status_code == 302
    event = AuditEvent.objects.get(event_type="user.changed_by_staff", subject_id=str(user.pk))
    assert event.actor == f"staff:{superuser.pk}"
    assert event.old_values == {"is_staff": False, "groups": []}
    assert event.new_values == {"is_staff": True, "groups": [SUPPORT], "full_name": "changed"}
    assert "Renamed" not in str(event.new_values) and "Pro Moted" not in str(event.old_values)

    password = operator.post(
        f"{USERS}{user.pk}/password/",
        {
            "password1": "a-Much-Better-pw-42",
            "password2": "a-Much-Better-pw-42",
            "usable_password": "true",
        },
    )
    assert password.status_code == 302
    pw_event = AuditEvent.objects.get(event_type="user.password_set_by_staff")
    assert pw_event.actor == f"staff:{superuser.pk}" and pw_event.new_values == {}
    # Saving without a change writes nothing.
    before = AuditEvent.objects.count()
    operator.post(
        f"{USERS}{user.pk}/change/",
        {
            "full_name": "Renamed Person",
            "is_active": "on",
            "is_staff": "on",
            "groups": [support.pk],
        },
    )
    assert AuditEvent.objects.count() == before


def test_group_permission_changes_are_audited(operator, superuser):
    from django.contrib.auth.models import Permission

    from adminops.roles import AUDITORS

    group = Group.objects.get(name=SUPPORT)
    kept = list(group.permissions.values_list("pk", flat=True))
    # One Support does not hold (since issue 16 it reads the ledger).
    extra = Permission.objects.get(
        content_type__app_label="inventory", codename="upload_credentials"
    )
    response = operator.post(
        f"/admin/auth/group/{group.pk}/change/",
        {"name": SUPPORT, "permissions": [*kept, extra.pk]},
    )
    assert response.status_code == 302
    event = AuditEvent.objects.get(event_type="group.changed_by_staff", subject_id=str(group.pk))
    assert event.actor == f"staff:{superuser.pk}"
    assert "inventory.upload_credentials" not in event.old_values["permissions"]
    assert "inventory.upload_credentials" in event.new_values["permissions"]
    assert set(event.new_values) == {"permissions"}
    auditors = Group.objects.get(name=AUDITORS)
    assert (
        operator.post(f"/admin/auth/group/{auditors.pk}/delete/", {"post": "yes"}).status_code
        == 302
    )
    deleted = AuditEvent.objects.get(event_type="group.deleted_by_staff")
    assert deleted.old_values["name"] == AUDITORS and deleted.subject_id == str(auditors.pk)
