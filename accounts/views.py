from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_POST

from accounts import selectors, services, tokens
from accounts.errors import EmailTaken
from accounts.forms import SignupForm, TokenForm
from billing.selectors import credit_account_for
from codingplans.ratelimit import hit

SIGNUP_LIMITED_MESSAGE = (
    "Too many sign-ups from your network. Try again within the hour, or log in if you "
    "already have an account."
)


def signup_allowed(request) -> bool:
    """Count one sign-up attempt against the client address's budget for the hour
    (SIGNUP_RATE_LIMIT_PER_HOUR): a bound on accounts made by script from one place."""
    return hit(
        "signup-ip",
        request.META.get("REMOTE_ADDR", ""),
        limit=settings.SIGNUP_RATE_LIMIT_PER_HOUR,
        window_seconds=3600,
    )


@sensitive_post_parameters("password")
def signup(request):
    if request.user.is_authenticated:
        return redirect("/subscriptions/")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and not signup_allowed(request):
        # Refused before the form is checked: no password validation, no "address taken".
        return render(
            request,
            "accounts/signup.html",
            {"form": SignupForm(), "error": SIGNUP_LIMITED_MESSAGE},
            status=429,
        )
    if request.method == "POST" and form.is_valid():
        try:
            user = services.create_user(
                email=form.cleaned_data["email"],
                password=form.cleaned_data["password"],
                full_name=form.cleaned_data["full_name"],
                now=timezone.now(),
            )
        except EmailTaken as exc:
            form.add_error("email", exc.message)
        else:
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            return redirect("/subscriptions/")
    return render(request, "accounts/signup.html", {"form": form})


@never_cache  # the page right after creating a token carries its plaintext: never cache it
@login_required
def account(request):
    return render(
        request,
        "accounts/account.html",
        {
            "tokens": selectors.tokens_for(request.user),
            "token_form": TokenForm(),
            "new_token": request.session.pop("new_api_token", None),
        },
    )


@login_required
@require_POST
def create_token(request):
    form = TokenForm(request.POST)
    name = form.cleaned_data["name"] if form.is_valid() else ""
    issued = tokens.create_api_token(user=request.user, name=name, now=timezone.now())
    # Shown once on the next page view, then gone from the session.
    request.session["new_api_token"] = issued.plaintext
    return redirect("account")


@login_required
@require_POST
def revoke_token(request, token_id: int):
    tokens.revoke_api_token(user=request.user, token_id=token_id, now=timezone.now())
    messages.success(request, "The token was revoked.")
    return redirect("account")


@sensitive_post_parameters("password")
@login_required
def delete_account_view(request):
    """Self-service deletion (SPEC D1), confirmed by re-entering the password."""
    from django.contrib.auth import logout

    refusal = services.deletion_refusal(
        target=request.user, channel=services.DeletionChannel.SELF_SERVICE, by=request.user
    )
    error = None
    if request.method == "POST":
        if refusal is not None:
            error = refusal
        elif request.POST.get("confirm") != "on":
            error = "Tick the box to confirm that you understand what deletion does."
        elif not request.user.check_password(request.POST.get("password", "")):
            error = "That password is not correct."
        else:
            services.delete_account(
                user=request.user, actor=f"user:{request.user.pk}", now=timezone.now()
            )
            logout(request)
            messages.success(request, "Your account has been deleted.")
            return redirect("/accounts/login/")
    # SPEC M10: the confirmation names the balance that deletion forfeits.
    forfeit_micros = credit_account_for(request.user).balance_micros
    return render(
        request,
        "accounts/delete.html",
        {"error": error, "refusal": refusal, "forfeit_micros": forfeit_micros},
        status=400 if error else 200,
    )
