"""The ward workflow's pages: GET /ward/flow/ lists the patients of the user's wards with their
beds and devices and the acts on each; every act is a POST that first shows a confirmation page
(no change; audited as a read) and acts only when that page's form is sent with `confirm=yes`.
Then the user is sent back to the list with the outcome. Authorization, audit and the live frame
are the acts' (dashboard/flow/acts.py): a content problem (an unknown device…) comes back as a
message on the list, a refusal as the 403 page (audit.access.answers)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django import forms
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from audit.access.decorators import staff_page
from audit.access.policy import actor_from_request
from config.refusal import Refusal
from dashboard.flow import acts
from dashboard.flow.forms import AdmitForm, DeviceForm, DischargeForm, SwapForm, TransferForm, form_errors
from telemetry.models import Patient

CAPABILITY = "manage_patient_flow"


@dataclass(frozen=True)
class Act:
    form: type[forms.Form]
    run: Callable[..., Patient]
    title: str  # the confirmation page's question, formatted with the fields and `pseudonym`
    done: str  # the message after the act, formatted the same way


ACTS: dict[str, Act] = {
    "admit": Act(AdmitForm, acts.flow_admit, "Admit a new patient to {ward_code}?", "{pseudonym} admitted to {ward}."),
    "associate": Act(
        DeviceForm,
        acts.flow_associate,
        "Associate {device_id} with {pseudonym}?",
        "{device_id} now measures {pseudonym}.",
    ),
    "swap": Act(
        SwapForm,
        acts.flow_swap,
        "Replace {old_device_id} by {new_device_id} on {pseudonym}?",
        "{new_device_id} replaces {old_device_id} on {pseudonym}.",
    ),
    "release": Act(
        DeviceForm,
        acts.flow_release,
        "Take {device_id} off {pseudonym}?",
        "{device_id} no longer measures {pseudonym}.",
    ),
    "transfer": Act(
        TransferForm, acts.flow_transfer, "Transfer {pseudonym} to {ward_code}?", "{pseudonym} transferred to {ward}."
    ),
    "discharge": Act(DischargeForm, acts.flow_discharge, "Discharge {pseudonym}?", "{pseudonym} discharged."),
}


@require_GET
@staff_page(CAPABILITY, "ward.flow.view")
def flow_page(request: HttpRequest) -> HttpResponse:
    page = acts.flow_page_read(user=request.user, actor=actor_from_request(request))
    context = {"page": page, "admit_form": AdmitForm(), "device_form": DeviceForm(), "swap_form": SwapForm()}
    return render(request, "dashboard/flow.html", context)


@require_POST
@staff_page(CAPABILITY, "patient.admitted")
def flow_admit_view(request: HttpRequest) -> HttpResponse:
    return _act(request, "admit", "")


@require_POST
@staff_page(CAPABILITY, "ward.flow")
def flow_patient_view(request: HttpRequest, pseudonym: str, act: str) -> HttpResponse:
    if act not in ACTS or act == "admit":
        raise Http404("no such act")
    return _act(request, act, pseudonym)


def _act(request: HttpRequest, name: str, pseudonym: str) -> HttpResponse:
    act = ACTS[name]
    form = act.form(request.POST)
    if not form.is_valid():
        messages.error(request, form_errors(form))
        return redirect("ward-flow")
    fields: dict[str, Any] = form.cleaned_data
    actor = actor_from_request(request)
    words = {**fields, "pseudonym": pseudonym}
    if request.POST.get("confirm") != "yes":
        subject = acts.flow_confirm_read(
            user=request.user, actor=actor, act=name, pseudonym=pseudonym, ward_code=fields.get("ward_code", "")
        )
        context = {"act": name, "question": act.title.format(**words), "patient": subject, "fields": fields}
        return render(request, "dashboard/flow_confirm.html", context)
    args = {"pseudonym": pseudonym} if pseudonym else {}
    try:
        patient = act.run(user=request.user, actor=actor, **args, **fields)
    except Refusal as refusal:
        if refusal.status != 400:
            raise  # audited; answered with the refusal page by staff_page
        messages.error(request, refusal.detail)
        return redirect("ward-flow")
    messages.success(request, act.done.format(**{**words, "pseudonym": patient.pseudonym, "ward": patient.ward.code}))
    return redirect("ward-flow")
