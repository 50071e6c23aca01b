"""The lifecycle pages: legal holds (compliance), retention (compliance and administrators), and
the research export (compliance). Thin like every page: the access layer decides (staff_page),
the lifecycle services act and audit, each request writes exactly one audit event."""

from __future__ import annotations

import datetime as dt
import uuid

from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from audit.access.answers import refusal_pages
from audit.access.decorators import staff_page
from audit.access.policy import actor_from_request, requester_read
from audit.access.refusals import refusal_audit
from audit.trail import audit_record
from config.refusal import Refusal
from telemetry.errors import RegistryError
from telemetry.lifecycle.forms import HoldForm, ReleaseForm, ResearchExportForm
from telemetry.lifecycle.holds import legal_hold_release, legal_hold_set, legal_holds
from telemetry.lifecycle.research import research_export_create, research_exports_of, research_file
from telemetry.lifecycle.retention import retention_classes, retention_days


def _refused(request: HttpRequest, action: str, exc: RegistryError, facts: dict[str, str]) -> None:
    """A lifecycle act that could not be done as asked, answered on its page: audited as denied."""
    refusal_audit(Refusal(action=action, reason=exc.code, facts=facts), actor_from_request(request))
    messages.error(request, str(exc))


@require_http_methods(["GET", "POST"])
@staff_page("manage_legal_holds", "legal_holds.view")
def holds_view(request: HttpRequest) -> HttpResponse:
    """The holds, open and released; POST opens one on a patient or a ward."""
    form = HoldForm(request.POST or None)
    if request.method == "POST":
        if not form.is_valid():
            refusal_audit(Refusal(action="legal_hold.set", reason="invalid"), actor_from_request(request))
            return render(request, "telemetry/legal_holds.html", {"holds": legal_holds(), "form": form}, status=400)
        data = form.cleaned_data
        try:
            hold = legal_hold_set(
                pseudonym=data["pseudonym"] or None,
                ward_code=data["ward"] or None,
                reason=data["reason"],
                actor=actor_from_request(request),
            )
        except RegistryError as exc:
            _refused(request, "legal_hold.set", exc, {"pseudonym": data["pseudonym"], "ward": data["ward"]})
        else:
            messages.success(request, f"Legal hold {hold.pk} set: nothing of it will be deleted until it is released.")
        return redirect("legal-holds")
    audit_record(actor=actor_from_request(request), action="legal_holds.view")
    context = {"holds": legal_holds(), "form": form, "release_form": ReleaseForm()}
    return render(request, "telemetry/legal_holds.html", context)


@require_POST
@staff_page("manage_legal_holds", "legal_hold.released")
def hold_release_view(request: HttpRequest, hold_id: int) -> HttpResponse:
    form = ReleaseForm(request.POST)
    reason = form.cleaned_data["reason"] if form.is_valid() else ""
    try:
        legal_hold_release(hold_id=hold_id, reason=reason, actor=actor_from_request(request))
    except RegistryError as exc:
        _refused(request, "legal_hold.released", exc, {"hold": str(hold_id)})
    else:
        messages.success(request, f"Legal hold {hold_id} released.")
    return redirect("legal-holds")


@require_GET
@staff_page("view_retention", "retention.view")
def retention_view(request: HttpRequest) -> HttpResponse:
    """Each data class's retention, and what the retention job found for each past ward-day."""
    audit_record(actor=actor_from_request(request), action="retention.view")
    context = {
        "classes": retention_classes(),
        "days": retention_days(),
        "lookback": settings.PERFUSE_RETENTION_LOOKBACK_DAYS,
    }
    return render(request, "telemetry/retention.html", context)


def _research_page(request: HttpRequest, form: ResearchExportForm, status: int = 200) -> HttpResponse:
    assert request.user.pk is not None  # staff_page let only a verified user in
    context = {"exports": research_exports_of(request.user.pk), "form": form, "now": dt.datetime.now(dt.UTC)}
    return render(request, "telemetry/research.html", context, status=status)


@require_http_methods(["GET", "POST"])
@staff_page("research_export", "research.exports.view")
def research_view(request: HttpRequest) -> HttpResponse:
    """The requester's research exports; POST builds a new one (de-identified, audited)."""
    form = ResearchExportForm(request.POST or None)
    if request.method == "GET":
        audit_record(actor=actor_from_request(request), action="research.exports.view")
        return _research_page(request, form)
    if not form.is_valid():
        refusal_audit(Refusal(action="research.export.created", reason="invalid"), actor_from_request(request))
        return _research_page(request, form, status=400)
    data = form.cleaned_data
    assert request.user.pk is not None
    try:
        export = research_export_create(
            requester_id=request.user.pk,
            actor=actor_from_request(request),
            ward_code=data["ward"],
            start=data["start"].replace(tzinfo=dt.UTC),
            end=data["end"].replace(tzinfo=dt.UTC),
            purpose=data["purpose"],
        )
    except RegistryError as exc:
        refused = Refusal(action="research.export.created", reason=exc.code, facts={"ward": data["ward"]})
        refusal_audit(refused, actor_from_request(request))
        form.add_error(None, str(exc))
        return _research_page(request, form, status=400)
    messages.success(request, f"Export ready: {export.patients} subjects, {export.rows} readings.")
    return redirect("research-exports")


@require_GET
@refusal_pages()
def research_file_view(request: HttpRequest, export_id: uuid.UUID, name: str) -> HttpResponse:
    """One file of one's own unexpired export (anyone else's: 404), each download audited."""
    export, found = research_file(export_id=str(export_id), name=name[:60])
    requester_read(
        user=request.user,
        actor=actor_from_request(request),
        requester_id=export.requester_id if export is not None and found is not None else None,
        capability="research_export",
        action="research.export.downloaded",
        detail={"export": str(export_id), "file": name[:60]},
    )
    assert found is not None  # requester_read refused a missing file
    response = HttpResponse(bytes(found.content), content_type=found.content_type)
    response["Content-Disposition"] = f'attachment; filename="research-{export_id}-{found.name}"'
    return response
