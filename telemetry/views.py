"""The device-administration pages: the registry with each device's keys and last contact, the
readings stored without a patient (counts only), and key revocation. Thin like every page: the
selectors read, telemetry.services writes, each request writes exactly one audit event
(refusals of the page are audited by audit.access.decorators.staff_page)."""

from __future__ import annotations

import datetime as dt

from django.contrib import messages
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from audit.access.decorators import staff_page
from audit.access.policy import actor_from_request
from audit.access.refusals import refusal_audit
from audit.trail import audit_record
from config.refusal import Refusal
from telemetry.calibrations import calibration_add, calibration_correct
from telemetry.forms import CalibrationCorrectForm, CalibrationForm
from telemetry.selectors import device_calibrations, devices_overview, readings_unassigned_counts
from telemetry.services import BrokerNotTold, RegistryError, device_key_revoke


@require_GET
@staff_page("manage_devices", "devices.view")
def devices(request: HttpRequest) -> HttpResponse:
    audit_record(actor=actor_from_request(request), action="devices.view")
    context = {"devices": devices_overview(), "unassigned": readings_unassigned_counts()}
    return render(request, "telemetry/devices.html", context)


@require_POST
@staff_page("manage_devices", "device.key_revoked")
def device_key_revoke_view(request: HttpRequest, key_id: str) -> HttpResponse:
    try:
        with transaction.atomic():
            key = device_key_revoke(key_id=key_id, actor=actor_from_request(request))
    except BrokerNotTold as exc:
        messages.error(request, str(exc))
        return redirect("devices")
    except RegistryError:
        refused = Refusal(action="device.key_revoked", reason="unknown_key", facts={"key_id": key_id[:64]})
        refusal_audit(refused, actor_from_request(request))  # answered on the devices page
        messages.error(request, "No such key.")
        return redirect("devices")
    messages.success(request, f"Key {key.key_id} of {key.device.device_id} revoked; it is refused from now on.")
    return redirect("devices")


@require_http_methods(["GET", "POST"])
@staff_page("manage_devices", "calibrations.view")
def device_calibrations_view(request: HttpRequest, device_id: str) -> HttpResponse:
    """A device's calibrations with their corrections and reprocessings; POST adds one."""
    history = device_calibrations(device_id)
    if history is None:
        raise Http404("no such device")
    form = CalibrationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            calibration_add(
                device_id=device_id,
                calibration_id=data["calibration_id"],
                gain=data["gain"],
                offset=data["offset"],
                effective_from=data["effective_from"].replace(tzinfo=dt.UTC),
                reason=data["reason"],
                actor=actor_from_request(request),
            )
        except RegistryError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Calibration {data['calibration_id']} recorded.")
            return redirect("device-calibrations", device_id=device_id)
    if request.method == "GET":
        audit_record(actor=actor_from_request(request), action="calibrations.view", subject=device_id)
    context = {"device_id": device_id, "history": history, "form": form, "correct_form": CalibrationCorrectForm()}
    return render(request, "telemetry/calibrations.html", context)


@require_POST
@staff_page("manage_devices", "calibration.corrected")
def calibration_correct_view(request: HttpRequest, device_id: str, calibration_id: str) -> HttpResponse:
    form = CalibrationCorrectForm(request.POST)
    if not form.is_valid():
        for errors in form.errors.values():
            messages.error(request, " ".join(str(e) for e in errors))
        return redirect("device-calibrations", device_id=device_id)
    try:
        _, reprocessing = calibration_correct(
            device_id=device_id,
            calibration_id=calibration_id,
            actor=actor_from_request(request),
            **form.cleaned_data,
        )
    except RegistryError as exc:
        messages.error(request, str(exc))
        return redirect("device-calibrations", device_id=device_id)
    messages.success(
        request,
        f"Calibration {calibration_id} corrected: {reprocessing.changed} of {reprocessing.examined} readings "
        "reprocessed; the old values are kept.",
    )
    return redirect("device-calibrations", device_id=device_id)
