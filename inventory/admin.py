"""Operators' admin for inventory (SPEC I1-I7, R1-R3, S1, S2).

Credentials are read-only here; the only writes are the upload and the revocation outcome, both
through services. No page shows an API key, its encrypted value or its fingerprint, and the
upstream plan id appears only for credentials waiting to be deprovisioned (I6, R1).
"""

from __future__ import annotations

from datetime import timedelta

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.files.uploadhandler import MemoryFileUploadHandler
from django.core.paginator import Paginator
from django.http import Http404, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.views.decorators.csrf import csrf_exempt, csrf_protect

from adminops.adminkit import ReadOnlyAdmin, audit_links, audit_url, clean_text
from adminops.audit import actor_for
from catalog import all_plans, get_plan
from codingplans.errors import DomainError
from inventory import selectors, services, upload, upload_jobs
from inventory.models import Credential, InventoryUpload

UPLOAD_PERMISSION = "inventory.upload_credentials"
REVOCATION_PERMISSION = "inventory.record_revocation"
MAX_UPLOAD_BYTES = 8 * 1024 * 1024
STATUS_REFRESH_SECONDS = 2
STALE_UPLOAD_AFTER = timedelta(minutes=10)
QUEUE_PAGE_SIZE = 100
REVOCABLE = {state.value for state in services.REVOCABLE_STATES}
CREDENTIAL_SECRETS = ("encrypted_key", "fingerprint")


def _plan_label(plan_id: str) -> str:
    plan = get_plan(plan_id)
    return f"{plan.name} ({plan_id})" if plan else plan_id


def _plan_choices() -> list[tuple[str, str]]:
    return [(plan.plan_id, f"{plan.name} ({plan.plan_id})") for plan in all_plans()]


# --- Forms ------------------------------------------------------------------------------------


class NoEchoTextarea(forms.Textarea):
    """Never sends pasted credentials back to the browser, even when the form has errors."""

    def format_value(self, value):
        return None


class SanitizedTextarea(forms.Textarea):
    """Shows a note back only as it would be stored: key-shaped strings redacted (R2)."""

    def format_value(self, value):
        return services.sanitize_note(value) if value else None


class UploadForm(forms.Form):
    plan_id = forms.ChoiceField(label="Plan", choices=_plan_choices)
    lines = forms.CharField(
        label="Credentials",
        required=False,
        strip=False,
        widget=NoEchoTextarea(
            attrs={"rows": 12, "cols": 90, "autocomplete": "off", "spellcheck": "false"}
        ),
        help_text=(
            "One credential per line: <code>&lt;api key&gt;::&lt;upstream plan id&gt;</code>. "
            "Blank lines are ignored. For large batches, choose a file instead."
        ),
    )
    file = forms.FileField(
        label="Or a file",
        required=False,
        help_text="A UTF-8 text file in the same format (at most 8 MB).",
    )

    def clean(self):
        cleaned = super().clean()
        pasted = cleaned.get("lines") or ""
        chosen = cleaned.get("file")
        if pasted.strip() and chosen:
            raise forms.ValidationError("Paste the lines or choose a file, not both.")
        text = pasted
        if chosen:
            if chosen.size > MAX_UPLOAD_BYTES:
                raise forms.ValidationError("The file is larger than 8 MB; split it.")
            try:
                text = chosen.read().decode("utf-8-sig")
            except UnicodeDecodeError:
                raise forms.ValidationError("The file is not UTF-8 text.") from None
        count = upload.count_credential_lines(text)
        if count == 0:
            raise forms.ValidationError("There are no credentials to upload.")
        if count > upload.MAX_LINES:
            raise forms.ValidationError(
                f"Too many lines: at most {upload.MAX_LINES} credentials per upload."
            )
        cleaned["text"] = text
        return cleaned


class RevocationOutcomeForm(forms.Form):
    outcome = forms.ChoiceField(
        label="Outcome",
        widget=forms.RadioSelect,
        choices=[
            (Credential.State.REVOKED.value, "Revoked at MiniMax"),
            (Credential.State.REVOCATION_FAILED.value, "Revocation failed"),
        ],
    )
    note = forms.CharField(
        label="Note",
        required=False,
        widget=SanitizedTextarea(attrs={"rows": 4, "cols": 80, "maxlength": 2000}),
        help_text=(
            "Required when the revocation failed. Stored with key-shaped strings redacted, "
            "at most 500 characters."
        ),
    )

    def clean_note(self):
        return services.sanitize_note(self.cleaned_data.get("note") or "")

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("outcome") == Credential.State.REVOCATION_FAILED and not cleaned.get("note"):
            self.add_error("note", "Say what went wrong: a failed revocation needs a note.")
        return cleaned


# --- Upload handling: the file is read in memory, never spooled to a temporary file -----------


class _BoundedMemoryUploadHandler(MemoryFileUploadHandler):
    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        self.activated = content_length <= MAX_UPLOAD_BYTES + 64 * 1024


# --- Filters ----------------------------------------------------------------------------------


class PlanFilter(admin.SimpleListFilter):
    title = "plan"
    parameter_name = "plan_id"

    def lookups(self, request, model_admin):
        return _plan_choices()

    def queryset(self, request, queryset):
        value = self.value()
        return queryset.filter(plan_id=value) if value else queryset


# --- Credentials ------------------------------------------------------------------------------


@admin.register(Credential)
class CredentialAdmin(ReadOnlyAdmin):
    secret_fields = CREDENTIAL_SECRETS
    list_display = (
        "id",
        "plan_id",
        "state",
        "upstream_plan",
        "created_at",
        "assigned_at",
        "revocation_requested_at",
        "revoked_at",
        "revocation_attempts",
        "note",
    )
    list_filter = (PlanFilter, "state")
    list_select_related = ()
    list_per_page = 100
    ordering = ("-id",)
    search_fields = ("id",)
    search_help_text = "Credential id (e.g. 42 or #42)."
    fields = (
        "id",
        "plan_id",
        "state",
        "upstream_plan",
        "upload",
        "assigned_to",
        "holder_ref",
        "created_at",
        "assigned_at",
        "revocation_requested_at",
        "revoked_at",
        "last_attempt_at",
        "revocation_attempts",
        "note",
    )
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).defer(*CREDENTIAL_SECRETS)

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip().lstrip("#")
        if not term:
            return queryset, False
        if not term.isdigit():
            return queryset.none(), False
        return queryset.filter(pk=int(term)), False

    def has_view_permission(self, request, obj=None):
        return (
            super().has_view_permission(request, obj)
            or request.user.has_perm(UPLOAD_PERMISSION)
            or request.user.has_perm(REVOCATION_PERMISSION)
        )

    @admin.display(description="upstream plan id")
    def upstream_plan(self, obj: Credential) -> str | None:
        # Only for items support must deprovision at MiniMax (I6, R1).
        return obj.upstream_plan_id if obj.state in REVOCABLE else None

    @admin.display(description="note")
    def note(self, obj: Credential) -> str:
        return services.sanitize_note(obj.failure_note)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        credential = (
            Credential.objects.filter(pk=object_id).only("id", "state").first()
            if str(object_id).isdigit()
            else None
        )
        extra = {}
        if credential is not None:
            # Through the reverse relation the subscription declares, so inventory names no
            # model above it (issue 14).
            subscription_id = (
                Credential.objects.filter(pk=credential.pk)
                .values_list("subscription__id", flat=True)
                .first()
            )
            more = (
                [
                    (
                        f"Subscription #{subscription_id} events",
                        audit_url(
                            subject_type="subscriptions.subscription", subject_id=subscription_id
                        ),
                    )
                ]
                if subscription_id is not None
                else []
            )
            extra["audit_links"] = audit_links(request, credential, *more)
            if credential.state in REVOCABLE and request.user.has_perm(REVOCATION_PERMISSION):
                extra["record_revocation_url"] = reverse(
                    "admin:inventory_credential_record_revocation", args=[credential.pk]
                )
        return super().change_view(
            request, object_id, form_url, extra_context={**(extra_context or {}), **extra}
        )

    # -- extra pages --

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("upload/", wrap(self.upload_view), name="inventory_credential_upload"),
            path(
                "revocation-queue/",
                wrap(self.revocation_queue_view),
                name="inventory_credential_revocation_queue",
            ),
            path(
                "<int:credential_id>/record-revocation/",
                wrap(self.record_revocation_view),
                name="inventory_credential_record_revocation",
            ),
            *super().get_urls(),
        ]

    def _context(self, request, title: str, **extra):
        return {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": title,
            **extra,
        }

    def changelist_view(self, request, extra_context=None):
        counts = selectors.counts_by_plan()
        low = {plan_id: threshold for plan_id, _, threshold in selectors.low_stock_plans()}
        rows = [
            {
                "plan_id": plan_id,
                "label": _plan_label(plan_id),
                "counts": [by_state[state] for state in selectors.STATES],
                "total": sum(by_state.values()),
                "low": plan_id in low,
                "threshold": low.get(plan_id),
            }
            for plan_id, by_state in counts.items()
        ]
        extra_context = {
            **(extra_context or {}),
            "inventory_states": [Credential.State(state).label for state in selectors.STATES],
            "inventory_rows": rows,
            "low_stock": [row for row in rows if row["low"]],
            "queue_size": sum(
                by_state[state] for by_state in counts.values() for state in REVOCABLE
            ),
            "can_upload": request.user.has_perm(UPLOAD_PERMISSION),
            "can_revoke": request.user.has_perm(REVOCATION_PERMISSION),
        }
        return super().changelist_view(request, extra_context=extra_context)

    @csrf_exempt
    def upload_view(self, request):
        """I1: staff paste or choose a file; validation runs in the background (I2, I3)."""
        if not request.user.has_perm(UPLOAD_PERMISSION):
            raise PermissionDenied
        # Set before the body is parsed, hence CSRF is checked below rather than by middleware.
        request.upload_handlers = [_BoundedMemoryUploadHandler(request)]
        return csrf_protect(self._upload_view)(request)

    def _upload_view(self, request):
        if request.method == "POST":
            length = int(request.META.get("CONTENT_LENGTH") or 0)
            form = UploadForm(request.POST, request.FILES)
            if length > MAX_UPLOAD_BYTES + 64 * 1024 and not request.FILES:
                form.add_error(None, "The upload is larger than 8 MB; split it.")
            elif form.is_valid():
                upload = upload_jobs.start_upload(
                    plan_id=form.cleaned_data["plan_id"],
                    text=form.cleaned_data["text"],
                    user=request.user,
                    now=timezone.now(),
                )
                return HttpResponseRedirect(
                    reverse("admin:inventory_inventoryupload_status", args=[upload.pk])
                )
        else:
            form = UploadForm()
        context = self._context(
            request,
            "Upload credentials",
            form=form,
            recent_uploads=InventoryUpload.objects.defer("encrypted_payload").order_by(
                "-created_at", "-id"
            )[:10],
        )
        return TemplateResponse(request, "admin/inventory/credential/upload.html", context)

    def revocation_queue_view(self, request):
        """R1: what support must deprovision at MiniMax, oldest first."""
        if not request.user.has_perm(REVOCATION_PERMISSION):
            raise PermissionDenied
        rows = selectors.revocation_queue().only(
            "id",
            "plan_id",
            "state",
            "upstream_plan_id",
            "revocation_requested_at",
            "revocation_attempts",
            "last_attempt_at",
            "failure_note",
        )
        page = Paginator(rows, QUEUE_PAGE_SIZE).get_page(request.GET.get("page"))
        items = [
            {
                "credential": credential,
                "plan": _plan_label(credential.plan_id),
                "note": services.sanitize_note(credential.failure_note),
            }
            for credential in page.object_list
        ]
        context = self._context(request, "Revocation queue", page=page, items=items)
        return TemplateResponse(
            request, "admin/inventory/credential/revocation_queue.html", context
        )

    def record_revocation_view(self, request, credential_id: int):
        """R2: record `revoked` or `revocation_failed` (with a note), after a confirmation."""
        if not request.user.has_perm(REVOCATION_PERMISSION):
            raise PermissionDenied
        credential = get_object_or_404(
            Credential.objects.defer(*CREDENTIAL_SECRETS), pk=credential_id
        )
        queue_url = reverse("admin:inventory_credential_revocation_queue")
        in_queue = credential.state in REVOCABLE
        confirming = False
        if request.method == "POST" and in_queue:
            form = RevocationOutcomeForm(request.POST)
            if form.is_valid():
                if request.POST.get("confirm") == "yes":
                    try:
                        updated = services.record_revocation_outcome(
                            credential_id=credential.pk,
                            outcome=form.cleaned_data["outcome"],
                            note=form.cleaned_data["note"],
                            actor=actor_for(request.user),
                            now=timezone.now(),
                        )
                    except DomainError as exc:
                        messages.error(request, exc.message)
                    else:
                        messages.success(
                            request,
                            f"Credential #{updated.pk} recorded as "
                            f"{Credential.State(updated.state).label.lower()} "
                            f"(attempt {updated.revocation_attempts}).",
                        )
                    return HttpResponseRedirect(queue_url)
                confirming = True
        else:
            form = RevocationOutcomeForm()
        context = self._context(
            request,
            f"Record revocation outcome for credential #{credential.pk}",
            credential=credential,
            plan=_plan_label(credential.plan_id),
            in_queue=in_queue,
            form=form,
            confirming=confirming,
            outcome_label=dict(form.fields["outcome"].choices).get(
                form.cleaned_data.get("outcome") if confirming else None, ""
            ),
            queue_url=queue_url,
            note=services.sanitize_note(credential.failure_note),
        )
        return TemplateResponse(
            request, "admin/inventory/credential/record_revocation.html", context
        )


# --- Uploads ----------------------------------------------------------------------------------


@admin.register(InventoryUpload)
class InventoryUploadAdmin(ReadOnlyAdmin):
    secret_fields = ("encrypted_payload",)
    list_display = (
        "id",
        "plan_id",
        "status",
        "actor",
        "line_count",
        "validated_count",
        "stored_count",
        "created_at",
        "finished_at",
        "report",
    )
    list_filter = (PlanFilter, "status")
    ordering = ("-created_at", "-id")
    fields = (
        "id",
        "plan_id",
        "status",
        "actor",
        "line_count",
        "validated_count",
        "stored_count",
        "message",
        "created_at",
        "finished_at",
    )
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).defer("encrypted_payload")

    def has_view_permission(self, request, obj=None):
        return super().has_view_permission(request, obj) or request.user.has_perm(UPLOAD_PERMISSION)

    @admin.display(description="report")
    def report(self, obj: InventoryUpload) -> str:
        url = reverse("admin:inventory_inventoryupload_status", args=[obj.pk])
        return format_html('<a href="{}">Progress and report</a>', url)

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path(
                "<int:upload_id>/status/",
                wrap(self.status_view),
                name="inventory_inventoryupload_status",
            ),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        if not str(object_id).isdigit():
            raise Http404
        return HttpResponseRedirect(
            reverse("admin:inventory_inventoryupload_status", args=[int(object_id)])
        )

    def status_view(self, request, upload_id: int):
        """Progress while validating (refreshing itself), then the report by line (I2)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        upload = get_object_or_404(InventoryUpload.objects.defer("encrypted_payload"), pk=upload_id)
        running = upload.status in (
            InventoryUpload.Status.PENDING,
            InventoryUpload.Status.VALIDATING,
        )
        errors = [
            {"line": error.get("line"), "reason": clean_text(error.get("reason", ""))}
            for error in (upload.errors or [])
            if isinstance(error, dict)
        ]
        total = upload.line_count or 0
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Upload #{upload.pk}",
            "upload": upload,
            "plan": _plan_label(upload.plan_id),
            "running": running,
            "stale": running and timezone.now() - upload.created_at > STALE_UPLOAD_AFTER,
            "refresh_seconds": STATUS_REFRESH_SECONDS,
            "total": total,
            "percent": int(100 * upload.validated_count / total) if total else 0,
            "errors": errors,
            "message": clean_text(upload.message),
            "upload_url": reverse("admin:inventory_credential_upload"),
            "can_upload": request.user.has_perm(UPLOAD_PERMISSION),
            "audit_links": audit_links(request, upload),
        }
        return TemplateResponse(request, "admin/inventory/inventoryupload/status.html", context)
