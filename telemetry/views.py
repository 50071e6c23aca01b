"""The device-administration pages: the registry with each device's keys and last contact, the
readings stored without a patient (counts only), and key revocation. Thin like every page: the
selectors read, telemetry.services writes, each request writes exactly one audit event
(refusals of the page are audited by audit.access.decorators.staff_page)."""

from __future__ import annotations

from django.contrib import messages
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from audit.access.decorators import staff_page
from audit.access.policy import actor_from_request
from audit.access.refusals import refusal_audit
from audit.trail import audit_record
from config.refusal import Refusal
from telemetry.selectors import devices_overview, readings_unassigned_counts
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
