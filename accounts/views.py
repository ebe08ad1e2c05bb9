import logging
import smtplib

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login, update_session_auth_hash
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import PasswordChangeForm
from django.http import HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse_lazy
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_POST

from accounts import emails, selectors, services, tasks, tokens, verification
from accounts.errors import EmailTaken
from accounts.forms import (
    EmailChangeForm,
    NotificationsForm,
    PasswordResetRequestForm,
    SignupForm,
    TokenForm,
)
from billing.selectors import credit_account_for
from codingplans.errors import DomainError
from codingplans.ratelimit import hit

logger = logging.getLogger(__name__)

SIGNUP_LIMITED_MESSAGE = (
    "Too many sign-ups from your network. Try again within the hour, or log in if you "
    "already have an account."
)
LINK_LIMITED_MESSAGE = "Too many e-mails asked for in the last hour. Wait a while and try again."
MAIL_FAILED_MESSAGE = "We could not send the e-mail just now. Try again in a few minutes."


def signup_allowed(request) -> bool:
    """Count one sign-up attempt against the client address's budget for the hour
    (SIGNUP_RATE_LIMIT_PER_HOUR): a bound on accounts made by script from one place."""
    return hit(
        "signup-ip",
        request.META.get("REMOTE_ADDR", ""),
        limit=settings.SIGNUP_RATE_LIMIT_PER_HOUR,
        window_seconds=3600,
    )


def _base_url(request) -> str:
    """The site's address as this request reached it (a host ALLOWED_HOSTS accepted)."""
    return request.build_absolute_uri("/")


def _send(send, *args, **kwargs) -> bool:
    """Send one account e-mail from a page; a mail server that is down is logged and reported
    on the page, never a 500 (the customer can ask again)."""
    try:
        send(*args, **kwargs)
    except (smtplib.SMTPException, OSError):
        logger.exception("could not send an account e-mail")
        return False
    return True


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
                verified=False,  # SPEC A2: the link sent below verifies it
            )
        except EmailTaken as exc:
            form.add_error("email", exc.message)
        else:
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            if _send(emails.send_verification, user, base_url=_base_url(request)):
                messages.success(
                    request,
                    f"Welcome! We sent a link to {user.email}: open it to confirm your address "
                    "before you buy a plan or add credits.",
                )
            else:
                messages.warning(request, MAIL_FAILED_MESSAGE)
            return redirect("/subscriptions/")
    return render(request, "accounts/signup.html", {"form": form})


def _account_page(request, *, status: int = 200, **forms):
    return render(
        request,
        "accounts/account.html",
        {
            "tokens": selectors.tokens_for(request.user),
            "token_form": TokenForm(),
            "new_token": request.session.pop("new_api_token", None),
            "email_form": forms.get("email_form") or EmailChangeForm(),
            "password_form": PasswordChangeForm(request.user),
            "notifications_form": NotificationsForm(
                initial={"renewal_reminders": request.user.renewal_reminders}
            ),
            "error": forms.get("error"),
        },
        status=status,
    )


@never_cache  # the page right after creating a token carries its plaintext: never cache it
@login_required
def account(request):
    return _account_page(request)


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


# --- password reset and change (SPEC A1) ------------------------------------------------------


class PasswordResetRequestView(auth_views.PasswordResetView):
    """`/accounts/password-reset/`: the same answer for every address, known or not; the link
    goes out from a Celery task (by user id), so a known address answers no slower either."""

    template_name = "accounts/password_reset.html"
    form_class = PasswordResetRequestForm
    success_url = reverse_lazy("password_reset_done")

    def get_form_kwargs(self):
        return {**super().get_form_kwargs(), "request": self.request}

    def form_valid(self, form):
        base_url = _base_url(self.request)
        for user in form.get_users(form.cleaned_data["email"]):
            try:
                tasks.send_password_reset.delay(user.pk, base_url)
            except Exception:  # the broker is down: the page still answers alike
                logger.exception("could not queue a password reset e-mail")
        return HttpResponseRedirect(self.get_success_url())

    def form_invalid(self, form):
        response = super().form_invalid(form)
        if form.has_error("email", "rate_limited"):
            response.status_code = 429
        return response


class PasswordResetDoneView(auth_views.PasswordResetDoneView):
    template_name = "accounts/password_reset_done.html"


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    """The link's page: Django checks the one-time token (it hashes the password, so it stops
    working once used) and its age (PASSWORD_RESET_TIMEOUT)."""

    template_name = "accounts/password_reset_confirm.html"
    success_url = reverse_lazy("password_reset_complete")

    def form_valid(self, form):
        services.set_password(
            user=form.user,
            password=form.cleaned_data["new_password1"],
            via=services.PasswordChannel.RESET,
            now=timezone.now(),
        )
        del self.request.session[auth_views.INTERNAL_RESET_SESSION_TOKEN]
        return HttpResponseRedirect(self.get_success_url())


class PasswordResetCompleteView(auth_views.PasswordResetCompleteView):
    template_name = "accounts/password_reset_complete.html"


class PasswordChangeView(auth_views.PasswordChangeView):
    """`/account/password/` (the form is on /account/)."""

    template_name = "accounts/password_change.html"
    success_url = reverse_lazy("account")

    def form_valid(self, form):
        services.set_password(
            user=form.user,
            password=form.cleaned_data["new_password1"],
            via=services.PasswordChannel.CHANGE,
            now=timezone.now(),
        )
        update_session_auth_hash(self.request, form.user)  # this session stays logged in
        messages.success(
            self.request, "Your password was changed. Your other sessions were logged out."
        )
        return HttpResponseRedirect(self.get_success_url())

    def form_invalid(self, form):
        response = super().form_invalid(form)
        response.status_code = 400
        return response


# --- the address: change and verification (SPEC A1, A2) ----------------------------------------


def _links_allowed(request, scope: str) -> bool:
    return hit(
        scope,
        str(request.user.pk),
        limit=settings.EMAIL_LINK_RATE_LIMIT_PER_HOUR,
        window_seconds=3600,
    )


@sensitive_post_parameters("password")
@login_required
@require_POST
def email_change(request):
    """Ask for a new address: a link goes to it, the old one keeps working until it is used."""
    if not _links_allowed(request, "email-change"):
        return _account_page(request, status=429, error=LINK_LIMITED_MESSAGE)
    form = EmailChangeForm(request.POST, user=request.user)
    if not form.is_valid():
        return _account_page(request, status=400, email_form=form)
    try:
        new_email = services.new_email_for(user=request.user, email=form.cleaned_data["email"])
    except DomainError as exc:
        form.add_error("email", exc.message)
        return _account_page(request, status=exc.status, email_form=form)
    if _send(emails.send_email_change_link, request.user, new_email, base_url=_base_url(request)):
        messages.success(
            request,
            f"We sent a link to {new_email}. Open it to confirm the change; until then your "
            f"address stays {request.user.email}.",
        )
    else:
        messages.error(request, MAIL_FAILED_MESSAGE)
    return redirect("account")


def _link_invalid(request, message: str | None = None, status: int = 400):
    return render(request, "accounts/link_invalid.html", {"message": message}, status=status)


def email_change_confirm(request, token: str):
    """The link sent to the new address: GET shows what it changes, POST makes the change (a
    mail scanner that follows links changes nothing)."""
    change = verification.email_change_for(token)
    if change is None:
        return _link_invalid(request)
    if request.method != "POST":
        return render(
            request, "accounts/email_change_confirm.html", {"new_email": change.new_email}
        )
    try:
        old_email = services.change_email(
            user=change.user, new_email=change.new_email, now=timezone.now()
        )
    except DomainError as exc:
        return _link_invalid(request, exc.message, status=exc.status)
    _send(emails.send_email_changed_notice, old_email=old_email, new_email=change.new_email)
    messages.success(request, f"Your e-mail address is now {change.new_email}.")
    if request.user.is_authenticated and request.user.pk == change.user.pk:
        return redirect("account")
    return redirect("login")


def verify_email(request, token: str):
    """The link sent at sign-up: GET shows a button, POST verifies."""
    user = verification.user_for_verification(token)
    if user is None:
        return _link_invalid(request)
    if request.method != "POST":
        return render(request, "accounts/verify.html", {"verified": user.email_verified})
    services.verify_email(user=user, now=timezone.now())
    messages.success(request, "Thank you: your e-mail address is confirmed.")
    if request.user.is_authenticated and request.user.pk == user.pk:
        return redirect("/subscriptions/")
    return redirect("login")


@login_required
@require_POST
def resend_verification(request):
    """The banner's "resend link" (SPEC A2), rate-limited per account."""
    if request.user.email_verified:
        messages.info(request, "Your e-mail address is already confirmed.")
        return redirect("account")
    if not _links_allowed(request, "verify-resend"):
        return _account_page(request, status=429, error=LINK_LIMITED_MESSAGE)
    if _send(emails.send_verification, request.user, base_url=_base_url(request)):
        messages.success(request, f"We sent a new link to {request.user.email}.")
    else:
        messages.error(request, MAIL_FAILED_MESSAGE)
    return redirect("account")


@login_required
@require_POST
def notifications(request):
    """E-mail preferences (SPEC E1): the renewal reminder can be turned off."""
    form = NotificationsForm(request.POST)
    form.is_valid()  # a missing box is "off"; nothing else can be wrong
    services.set_notification_preferences(
        user=request.user,
        renewal_reminders=form.cleaned_data.get("renewal_reminders", False),
        now=timezone.now(),
    )
    messages.success(request, "E-mail preferences saved.")
    return redirect("/account/#notifications")
