from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from adminops.audit import actor_for
from billing import selectors, services
from billing.errors import AutoTopUpNeedsCard, AutoTopUpUnavailable, InvalidCreditAmount
from billing.forms import AutoTopUpForm
from billing.pages import credits_sections
from billing.topup import can_charge, top_up_available
from codingplans.money import format_usd


def _page(request, form=None, status=200):
    account = selectors.credit_account_for(request.user)
    before = request.GET.get("before")
    entries = selectors.ledger_page(
        request.user, before_id=int(before) if before and before.isdigit() else None, limit=51
    )
    form = form or AutoTopUpForm(
        initial={
            "enabled": account.auto_top_up_enabled,
            "amount_usd": format_usd(account.auto_top_up_amount_micros),
        }
    )
    return render(
        request,
        "billing/credits.html",
        {
            "account": account,
            "entries": entries[:50],
            "next_before": entries[49].pk if len(entries) > 50 else None,
            "form": form,
            "auto_top_up_available": top_up_available(),
            # SPEC M4: the stripe backend charges the saved card; without one, say so.
            "auto_top_up_needs_card": top_up_available() and not can_charge(request.user.pk),
            "sections": credits_sections(request),
        },
        status=status,
    )


@login_required
def credits(request):
    return _page(request)


@login_required
@require_POST
def auto_top_up(request):
    form = AutoTopUpForm(request.POST)
    if not form.is_valid():
        return _page(request, form)
    try:
        services.set_auto_top_up(
            user=request.user,
            enabled=form.cleaned_data["enabled"],
            amount_micros=form.cleaned_data["amount_usd"],
            actor=actor_for(request.user),
            now=timezone.now(),
        )
    except InvalidCreditAmount as exc:
        form.add_error("amount_usd", exc.message)
        return _page(request, form)
    except (AutoTopUpUnavailable, AutoTopUpNeedsCard) as exc:  # SPEC M7; M4: no saved card
        form.add_error("enabled", exc.message)
        return _page(request, form, status=exc.status)
    messages.success(request, "Auto top-up settings saved.")
    return redirect("credits")
