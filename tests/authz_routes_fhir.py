"""FHIR R4 routes for the authorization matrix (tests/authz_registry.py): patient data for the care
roles of the patient's ward, devices also for device administrators, exports only to the care
role that asked for them (someone else's export is a 404 for everyone)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib.auth.models import User
from django.db import connection

from dashboard.fhir.ids import raw_id
from dashboard.models import FhirExport, FhirExportChunk
from telemetry.models import DeviceKey, Patient, Ward
from tests import personas
from tests.authz_registry import Route
from tests.readings import Row, insert_readings

CARE = frozenset({"clinician", "oncall"})
DEVICES = frozenset({"clinician", "oncall", "device_admin", "admin"})
ALL = frozenset({"clinician", "oncall", "compliance", "device_admin", "admin"})
SAMPLE_TIME = dt.datetime(2026, 1, 1, 0, 30, tzinfo=dt.UTC)


def _observation(world: Any) -> dict[str, str]:
    device = DeviceKey.objects.select_related("device").get(key_id=world.key).device
    patient = Patient.objects.get(pseudonym=world.patient)
    with connection.cursor() as cursor:
        insert_readings(cursor, [Row(device.pk, patient.pk, "tissue_o2", 7, SAMPLE_TIME, 61.5, 0.9)])
    return {
        "obs": raw_id(device_pk=device.pk, metric="tissue_o2", seq=7, sample_time=SAMPLE_TIME),
        "device": device.device_id,
    }


def _device(world: Any) -> dict[str, str]:
    return {"device": DeviceKey.objects.select_related("device").get(key_id=world.key).device.device_id}


def _requester(world: Any, own: bool) -> User:
    user = User.objects.filter(username=world.caller).first() if own else None
    return user or personas.staff("fhir-someone-else", "clinician", ["ward-a"])


def _export(world: Any, *, own: bool, done: bool) -> dict[str, str]:
    now = dt.datetime.now(dt.UTC)
    job = FhirExport.objects.create(
        requester=_requester(world, own),
        ward=Ward.objects.get(code="ward-a"),
        types=["Patient"],
        request_url="http://testserver/fhir/R4/Group/ward-a/$export",
        patients=[],
        transaction_time=now,
        state=FhirExport.State.DONE if done else FhirExport.State.QUEUED,
        finished_at=now if done else None,
        expires_at=now + dt.timedelta(hours=1) if done else None,
        steps=1,
        cursor={"step": 1 if done else 0},
    )
    if done:
        FhirExportChunk.objects.create(export=job, resource_type="Patient", seq=0, lines=1, body="{}\n")
    return {"export": str(job.pk)}


ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}

ROUTES: list[Route] = [
    Route("fhir metadata", "fhir", "GET", "/fhir/R4/metadata", ALL, audited=False),
    Route("fhir patient", "fhir", "GET", "/fhir/R4/Patient/{patient}", CARE, patient_data=True, ward_scoped=True),
    Route(
        "fhir observation search",
        "fhir",
        "GET",
        "/fhir/R4/Observation?patient={patient}&date=ge2026-01-01T00:00:00Z&date=le2026-01-01T01:00:00Z",
        CARE,
        patient_data=True,
        ward_scoped=True,
    ),
    Route(
        "fhir observation read",
        "fhir",
        "GET",
        "/fhir/R4/Observation/{obs}",
        CARE,
        patient_data=True,
        ward_scoped=True,
        setup=_observation,
    ),
    Route(
        "fhir provenance search",
        "fhir",
        "GET",
        "/fhir/R4/Provenance?target=Observation/{obs}",
        CARE,
        patient_data=True,
        ward_scoped=True,
        setup=_observation,
    ),
    Route("fhir device", "fhir", "GET", "/fhir/R4/Device/{device}", DEVICES, ward_scoped=True, setup=_device),
    Route(
        "fhir device metrics",
        "fhir",
        "GET",
        "/fhir/R4/DeviceMetric?source=Device/{device}",
        DEVICES,
        ward_scoped=True,
        setup=_device,
    ),
    Route(
        "fhir group export",
        "fhir",
        "GET",
        "/fhir/R4/Group/ward-a/$export?_type=Observation,Patient",
        CARE,
        ward_scoped=True,
        headers=ASYNC,
    ),
    Route(
        "fhir export status (own, running)",
        "fhir",
        "GET",
        "/fhir/R4/$export-status/{export}",
        CARE,
        ward_scoped=True,
        setup=lambda world: _export(world, own=True, done=False),
    ),
    Route(
        "fhir export status (own, done)",
        "fhir",
        "GET",
        "/fhir/R4/$export-status/{export}",
        CARE,
        ward_scoped=True,
        setup=lambda world: _export(world, own=True, done=True),
    ),
    Route(
        "fhir export file (own)",
        "fhir",
        "GET",
        "/fhir/R4/$export-file/{export}/Patient.ndjson",
        CARE,
        ward_scoped=True,
        setup=lambda world: _export(world, own=True, done=True),
    ),
    Route(
        "fhir export cancel (own)",
        "fhir",
        "DELETE",
        "/fhir/R4/$export-status/{export}",
        CARE,
        ward_scoped=True,
        setup=lambda world: _export(world, own=True, done=False),
    ),
    Route(
        "fhir export status (someone else's)",
        "fhir",
        "GET",
        "/fhir/R4/$export-status/{export}",
        frozenset(),
        setup=lambda world: _export(world, own=False, done=True),
    ),
    Route(
        "fhir export file (someone else's)",
        "fhir",
        "GET",
        "/fhir/R4/$export-file/{export}/Patient.ndjson",
        frozenset(),
        setup=lambda world: _export(world, own=False, done=True),
    ),
]
