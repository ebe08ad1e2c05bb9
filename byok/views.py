"""/byok pages. Changing a plan-managed entry first asks for confirmation (SPEC B2)."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables
from django.views.decorators.http import require_POST

from byok import selectors, services
from byok.forms import AddKeyForm, ConfirmForm, ReplaceKeyForm, ToggleForm
from codingplans.crypto import SecretUnavailable
from codingplans.errors import DomainError
from codingplans.ratelimit import RateLimited

MANAGED_WARNING = (
    "This key is managed by your Coding Plan. Billing for the plan continues whatever you "
    "do here, and the plan's key cannot be recovered once you replace or delete it."
)


UNREADABLE_KEY = "This key can no longer be read on our side. Replace it with the key's value."


def _page(request, *, add_form=None, confirm=None, status=200):
    return render(
        request,
        "byok/byok.html",
        {
            "keys": selectors.keys_for(request.user),
            "add_form": add_form or AddKeyForm(),
            "confirm": confirm,
            "managed_warning": MANAGED_WARNING,
        },
        status=status,
    )


@login_required
def byok_page(request):
    return _page(request)


@sensitive_post_parameters("api_key")
@sensitive_variables("form", "api_key", "cleaned_data")
@login_required
@require_POST
def add_key(request):
    form = AddKeyForm(request.POST)
    if form.is_valid():
        try:
            services.add_key(
                user=request.user,
                provider_id=form.cleaned_data["provider_id"],
                api_key=form.cleaned_data["api_key"],
                now=timezone.now(),
            )
        except DomainError as exc:
            form.add_error(None, exc.message)
        else:
            messages.success(request, "Key saved. Only its last four characters are shown.")
            return redirect("byok")
    return _page(request, add_form=form, status=400)


def _needs_confirmation(key, form) -> bool:
    """A managed entry is changed only after the customer confirmed the warning (SPEC B2)."""
    return key.managed_by is not None and not (form.is_valid() and form.cleaned_data["confirm"])


@sensitive_post_parameters("api_key")
@sensitive_variables("form", "api_key", "cleaned_data")
@login_required
@require_POST
def replace_key(request, key_id: int):
    key = selectors.key_for(request.user, key_id)
    form = ReplaceKeyForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Enter the new key.")
        return redirect("byok")
    if _needs_confirmation(key, form):
        return _page(request, confirm={"key": key, "action": "replace"})
    try:
        services.update_key(
            user=request.user,
            key_id=key_id,
            api_key=form.cleaned_data["api_key"],
            now=timezone.now(),
        )
    except DomainError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, "Key replaced.")
    return redirect("byok")


@login_required
@require_POST
def toggle_key(request, key_id: int):
    key = selectors.key_for(request.user, key_id)
    form = ToggleForm(request.POST)
    # The form names the state it asks for, so a double submit does not flip the key back.
    wanted = form.wanted(current=key.enabled)
    if _needs_confirmation(key, form):
        return _page(request, confirm={"key": key, "action": "toggle", "enabled": wanted})
    services.update_key(user=request.user, key_id=key_id, enabled=wanted, now=timezone.now())
    messages.success(request, "Key enabled." if wanted else "Key disabled.")
    return redirect("byok")


@login_required
@require_POST
def delete_key(request, key_id: int):
    key = selectors.key_for(request.user, key_id)
    form = ConfirmForm(request.POST)
    if _needs_confirmation(key, form):
        return _page(request, confirm={"key": key, "action": "delete"})
    services.delete_key(user=request.user, key_id=key_id, now=timezone.now())
    messages.success(request, "Key deleted.")
    return redirect("byok")


@login_required
@require_POST
def test_key(request, key_id: int):
    try:
        result = services.check_stored_key(user=request.user, key_id=key_id)
    except SecretUnavailable:  # encrypted under a key that has since been retired
        messages.error(request, UNREADABLE_KEY)
        return redirect("byok")
    except RateLimited as exc:
        messages.error(request, exc.message)
        return redirect("byok")
    if result.ok:
        messages.success(request, f"The key works: {result.message}")
    else:
        messages.error(request, f"Key test failed: {result.message}")
    return redirect("byok")
