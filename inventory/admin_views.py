"""The inventory admin's own pages (SPEC I1-I3, R1-R2): the upload form, an upload's progress and
report, the revocation queue and recording a revocation outcome.

Each page is a function of the ModelAdmin it belongs to; `inventory.admin` wires them into its
URLs through `admin_page`. The pages only parse, call one service or selector and render.
"""

from __future__ import annotations

from datetime import timedelta
from functools import wraps

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.files.uploadhandler import MemoryFileUploadHandler
from django.core.paginator import Paginator
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt, csrf_protect

from adminops.adminkit import audit_links, clean_text
from adminops.audit import actor_for
from catalog import get_plan
from codingplans.errors import DomainError
from inventory import selectors, services, upload_jobs
from inventory.admin_forms import MAX_UPLOAD_BYTES, RevocationOutcomeForm, UploadForm
from inventory.models import Credential, InventoryUpload

UPLOAD_PERMISSION = "inventory.upload_credentials"
REVOCATION_PERMISSION = "inventory.record_revocation"
STOCK_HEALTH_PERMISSION = "inventory.manage_stock_health"
STATUS_REFRESH_SECONDS = 2
STALE_UPLOAD_AFTER = timedelta(minutes=10)
QUEUE_PAGE_SIZE = 100
REVOCABLE = {state.value for state in Credential.REVOCABLE_STATES}
CREDENTIAL_SECRETS = ("encrypted_key", "fingerprint")


def plan_label(plan_id: str) -> str:
    plan = get_plan(plan_id)
    return f"{plan.name} ({plan_id})" if plan else plan_id


def admin_page(model_admin, view):
    """`view(model_admin, request, ...)` as a page of the admin site (login, staff check, CSRF
    unless the view is marked exempt)."""

    @wraps(view)
    def page(request, *args, **kwargs):
        return view(model_admin, request, *args, **kwargs)

    return model_admin.admin_site.admin_view(page)


def _context(model_admin, request, title: str, **extra):
    return {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": title,
        **extra,
    }


# --- Upload handling: the file is read in memory, never spooled to a temporary file -----------


class _BoundedMemoryUploadHandler(MemoryFileUploadHandler):
    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        self.activated = content_length <= MAX_UPLOAD_BYTES + 64 * 1024


# --- Credentials ------------------------------------------------------------------------------


@csrf_exempt
def upload_view(model_admin, request):
    """I1: staff paste or choose a file; validation runs in the background (I2, I3)."""
    if not request.user.has_perm(UPLOAD_PERMISSION):
        raise PermissionDenied
    # Set before the body is parsed, hence CSRF is checked below rather than by middleware.
    request.upload_handlers = [_BoundedMemoryUploadHandler(request)]
    return csrf_protect(lambda request: _upload_view(model_admin, request))(request)


def _upload_view(model_admin, request):
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
    context = _context(
        model_admin,
        request,
        "Upload credentials",
        form=form,
        recent_uploads=InventoryUpload.objects.defer("encrypted_payload").order_by(
            "-created_at", "-id"
        )[:10],
    )
    return TemplateResponse(request, "admin/inventory/credential/upload.html", context)


def revocation_queue_view(model_admin, request):
    """R1: what support must deprovision at the provider, oldest first."""
    if not request.user.has_perm(REVOCATION_PERMISSION):
        raise PermissionDenied
    rows = selectors.revocation_queue()
    page = Paginator(rows, QUEUE_PAGE_SIZE).get_page(request.GET.get("page"))
    items = [
        {
            "credential": credential,
            "plan": plan_label(credential.plan_id),
            "note": services.sanitize_note(credential.failure_note),
        }
        for credential in page.object_list
    ]
    context = _context(model_admin, request, "Revocation queue", page=page, items=items)
    return TemplateResponse(request, "admin/inventory/credential/revocation_queue.html", context)


def record_revocation_view(model_admin, request, credential_id: int):
    """R2: record `revoked` or `revocation_failed` (with a note), after a confirmation."""
    if not request.user.has_perm(REVOCATION_PERMISSION):
        raise PermissionDenied
    credential = get_object_or_404(Credential.objects.defer(*CREDENTIAL_SECRETS), pk=credential_id)
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
    context = _context(
        model_admin,
        request,
        f"Record revocation outcome for credential #{credential.pk}",
        credential=credential,
        plan=plan_label(credential.plan_id),
        in_queue=in_queue,
        form=form,
        confirming=confirming,
        outcome_label=dict(form.fields["outcome"].choices).get(
            form.cleaned_data.get("outcome") if confirming else None, ""
        ),
        queue_url=queue_url,
        note=services.sanitize_note(credential.failure_note),
    )
    return TemplateResponse(request, "admin/inventory/credential/record_revocation.html", context)


# --- Uploads ----------------------------------------------------------------------------------


def status_view(model_admin, request, upload_id: int):
    """Progress while validating (refreshing itself), then the report by line (I2)."""
    if not model_admin.has_view_permission(request):
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
    context = _context(
        model_admin,
        request,
        f"Upload #{upload.pk}",
        upload=upload,
        plan=plan_label(upload.plan_id),
        running=running,
        stale=running and timezone.now() - upload.created_at > STALE_UPLOAD_AFTER,
        refresh_seconds=STATUS_REFRESH_SECONDS,
        total=total,
        percent=int(100 * upload.validated_count / total) if total else 0,
        errors=errors,
        message=clean_text(upload.message),
        upload_url=reverse("admin:inventory_credential_upload"),
        can_upload=request.user.has_perm(UPLOAD_PERMISSION),
        audit_links=audit_links(request, upload),
    )
    return TemplateResponse(request, "admin/inventory/inventoryupload/status.html", context)


def stock_health_view(model_admin, request, credential_id: int):
    """H2: retire an available or quarantined credential (with a note), or re-test a
    quarantined one and return it to stock when its provider accepts it again."""
    from inventory.health import retest_credential

    if not request.user.has_perm(STOCK_HEALTH_PERMISSION):
        raise PermissionDenied
    credential = get_object_or_404(Credential.objects.defer(*CREDENTIAL_SECRETS), pk=credential_id)
    change_url = reverse("admin:inventory_credential_change", args=[credential.pk])
    if request.method == "POST":
        action = request.POST.get("action")
        actor = actor_for(request.user)
        try:
            if action == "retire":
                services.retire_credential(
                    credential_id=credential.pk,
                    note=request.POST.get("note", ""),
                    actor=actor,
                    now=timezone.now(),
                )
                messages.success(
                    request,
                    f"Credential #{credential.pk} retired: it is in the revocation queue.",
                )
            elif action == "retest":
                verdict = retest_credential(
                    credential_id=credential.pk, actor=actor, now=timezone.now()
                )
                if verdict.ok:
                    messages.success(
                        request, f"Credential #{credential.pk} passed and is available again."
                    )
                else:
                    messages.error(
                        request,
                        f"Credential #{credential.pk} failed the re-test and stays quarantined.",
                    )
        except DomainError as exc:
            messages.error(request, exc.message)
        return HttpResponseRedirect(change_url)
    context = _context(
        model_admin,
        request,
        f"Stock health of credential #{credential.pk}",
        credential=credential,
        plan=plan_label(credential.plan_id),
        can_retire=credential.state in Credential.RETIRABLE_STATES,
        can_retest=credential.state == Credential.State.QUARANTINED,
        change_url=change_url,
        note=clean_text(credential.health_note),
    )
    return TemplateResponse(request, "admin/inventory/credential/stock_health.html", context)
