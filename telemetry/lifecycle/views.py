"""The lifecycle pages: legal holds (compliance), retention (compliance and administrators), and
the research export (compliance). Thin like every page: the access layer decides (staff_page),
the lifecycle services act and audit, each request writes exactly one audit event."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from audit.access.decorators import staff_page
from audit.access.policy import actor_from_request
from audit.access.refusals import refusal_audit
from audit.trail import audit_record
from config.refusal import Refusal
from telemetry.errors import RegistryError
from telemetry.lifecycle.forms import HoldForm, ReleaseForm
from telemetry.lifecycle.holds import legal_hold_release, legal_hold_set, legal_holds
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
