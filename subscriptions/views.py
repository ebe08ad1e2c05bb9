"""Subscription Center pages (SPEC U1, U2, U5, U6, P7). Thin: parse, call, render."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from billing.selectors import credit_account_for, top_up_for_term
from catalog import all_plans, get_plan, provider_name
from codingplans.errors import DomainError
from codingplans.ratelimit import enforce
from gateway.services import usage_in_period
from subscriptions import actions, intents, selectors
from subscriptions.api import idempotency_key
from subscriptions.errors import InvalidCursor
from subscriptions.models import Subscription
from subscriptions.purchase import purchase_plan
from subscriptions.quota import QuotaUnavailable, quota_for
from upstream.providers import registry


def _center(request, *, status: int = 200, error: str | None = None):
    show_all = request.GET.get("show") == "all"
    subscriptions = selectors.subscriptions_for(request.user, include_terminal=True)
    live = [s for s in subscriptions if s.is_live]
    terminal = [s for s in subscriptions if not s.is_live]
    sold_out = selectors.sold_out_plan_ids()
    saved = selectors.saved_intent_plan_ids(request.user)
    live_providers = {s.provider_id for s in live}
    plans = [
        {
            "plan": plan,
            "sold_out": plan.plan_id in sold_out,
            "intent_saved": plan.plan_id in saved,
            "provider_taken": plan.provider_id in live_providers,
            # A fresh key per rendered form: a double-click or a resubmit replays, never re-buys.
            "idempotency_key": str(uuid.uuid4()),
        }
        for plan in all_plans()
    ]
    # SPEC V2: the catalog grouped by provider, in catalog order; one live plan per provider (P2).
    groups: dict[str, dict] = {}
    for item in plans:
        plan = item["plan"]
        group = groups.setdefault(
            plan.provider_id,
            {
                "provider_id": plan.provider_id,
                "provider_name": plan.provider_name,
                "taken": plan.provider_id in live_providers,
                "plans": [],
            },
        )
        group["plans"].append(item)
    return render(
        request,
        "subscriptions/index.html",
        {
            "live": live,
            "provider_groups": list(groups.values()),
            "terminal": terminal if show_all else [],
            "terminal_count": len(terminal),
            "show_all": show_all,
            "plans": plans,
            "balance_micros": credit_account_for(request.user).balance_micros,
            "purchase_error": error,
        },
        status=status,
    )


@login_required
def subscription_center(request):
    return _center(request)


@login_required
@require_POST
def purchase(request):
    if not settings.CODING_PLANS_PURCHASE_ENABLED:
        raise Http404("Purchases are not available.")
    try:
        enforce("purchase", str(request.user.pk), limit=settings.PURCHASE_RATE_LIMIT_PER_MINUTE)
        outcome = purchase_plan(
            user=request.user,
            plan_id=request.POST.get("plan_id"),
            idempotency_key=idempotency_key(request.POST.get("idempotency_key")),
            now=timezone.now(),
        )
    except DomainError as exc:
        return _center(request, status=exc.status, error=exc.message)
    if not outcome.replayed:
        name = provider_name(get_plan(request.POST.get("plan_id")).provider_id)
        messages.success(
            request,
            f"Your plan is active. It configured {name} in your BYOK settings, so your {name} "
            "traffic now runs on the plan.",
        )
    return redirect("coding-plan-detail", subscription_id=outcome.subscription_id)


@login_required
def detail(request, subscription_id: int):
    subscription = selectors.subscription_for(request.user, subscription_id)
    try:
        terms, next_cursor = selectors.charges_page(
            subscription, cursor=request.GET.get("cursor") or None
        )
    except InvalidCursor:  # a mangled "load more" link: start again from the newest charge
        terms, next_cursor = selectors.charges_page(subscription)
    plan = get_plan(subscription.plan_id)
    entry = selectors.installed_entry(subscription)
    provider = registry.get(subscription.provider_id)
    quota, quota_error = None, None
    if subscription.is_live:
        try:
            quota = quota_for(subscription, now=timezone.now())
        except QuotaUnavailable as exc:  # never breaks the page (Q2)
            quota_error = exc.message
    credential_problem = subscription.is_live and subscription.credential_problem_at is not None
    if quota_error is not None and subscription.is_live:
        # The quota fetch may have just met a dead key (H3), and its replacement run.
        credential_problem = Subscription.objects.filter(
            pk=subscription.pk, credential_problem_at__isnull=False
        ).exists()
    return render(
        request,
        "subscriptions/detail.html",
        {
            "subscription": subscription,
            "plan": plan,
            "plan_name": selectors.plan_name(subscription.plan_id),
            "provider_name": subscription.provider_name,
            "quota_not_reported": provider.quota_not_reported_message() if provider else "",
            # How to use the plan through the gateway (SPEC G1, V4): base URL and model prefix.
            "gateway_base_url": request.build_absolute_uri("/api/v1/gateway"),
            "model_example": (
                f"{provider.provider_id}/{provider.example_model}" if provider else ""
            ),
            "installed_entry": entry,
            "quota": quota,
            "quota_error": quota_error,
            "credential_problem": credential_problem,
            "usage": usage_in_period(subscription) if subscription.is_live else None,
            "terms": terms,
            "next_cursor": next_cursor,
            "paging": bool(request.GET.get("cursor")),
            # SPEC M4, U4: what the auto top-up of the unpaid term came to.
            "top_up": top_up_for_term(
                subscription_id=subscription.pk, due_at=subscription.current_period_end
            )
            if subscription.status == "past_due"
            else None,
        },
    )


@login_required
@require_POST
def save_intent(request, plan_id: str):
    intents.save_intent(user=request.user, plan_id=plan_id, now=timezone.now())
    messages.success(request, "Saved. We will e-mail you once when this plan is available again.")
    return redirect("subscriptions")


@login_required
@require_POST
def withdraw_intent(request, plan_id: str):
    intents.withdraw_intent(user=request.user, plan_id=plan_id, now=timezone.now())
    messages.success(request, "You will not be notified about this plan.")
    return redirect("subscriptions")


@login_required
def cancel(request, subscription_id: int):
    """GET: the confirmation (U3). POST: cancel at period end (L5)."""
    subscription = selectors.subscription_for(request.user, subscription_id)
    if request.method == "POST":
        try:
            actions.cancel_at_period_end(
                user=request.user, subscription_id=subscription.pk, now=timezone.now()
            )
        except DomainError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(
                request,
                "Cancellation scheduled. Your plan keeps working until the paid period ends.",
            )
        return redirect("coding-plan-detail", subscription_id=subscription.pk)
    return render(
        request,
        "subscriptions/cancel_confirm.html",
        {"subscription": subscription, "plan_name": selectors.plan_name(subscription.plan_id)},
    )


@login_required
@require_POST
def resume(request, subscription_id: int):
    subscription = selectors.subscription_for(request.user, subscription_id)
    try:
        actions.resume_subscription(
            user=request.user, subscription_id=subscription.pk, now=timezone.now()
        )
    except DomainError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, "Cancellation undone. Your plan will renew as usual.")
    return redirect("coding-plan-detail", subscription_id=subscription.pk)
