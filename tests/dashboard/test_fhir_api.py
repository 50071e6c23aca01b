"""The FHIR R4 read API (docs/fhir.md): every answer validated with fhir.resources (tests/fhir_support.py)."""

from __future__ import annotations

import datetime as dt
import urllib.parse
from typing import Any

import pytest
from django.test import Client

from audit.models import AuditEvent
from audit.selectors import patient_disclosures
from config.api_errors import operation_outcome
from config.live import iso
from dashboard.fhir.ids import observation_id_parse
from telemetry.models import Calibration, PatientIdentity, Ward
from telemetry.selectors import patient_series
from telemetry.stays import patient_transfer
from tests import personas
from tests.fhir_support import body, outcome_code, valid
from tests.live_support import insert_readings, patient

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2026, 1, 10, 8, 0, tzinfo=dt.UTC)
SPAN = "date=ge2026-01-10T08:00:00Z&date=lt2026-01-10T09:00:00Z"


@pytest.fixture
def client(ward_clinician: Any) -> Client:
    return personas.verified_client(ward_clinician)


@pytest.fixture
def p1(ward_a: Ward) -> Any:
    found, device = patient("fhir-one", ward_a, "lumee-fhir-1")
    return found, device


def _relative(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.path}?{parts.query}"


def _pages(client: Client, url: str) -> list[dict[str, Any]]:
    pages = []
    while url:
        bundle = body(client.get(url))
        assert bundle["type"] == "searchset"
        pages.append(bundle)
        nexts = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        url = _relative(nexts[0]) if nexts else ""
    return pages


def test_metadata_lists_exactly_what_answers(client: Client) -> None:
    statement = body(client.get("/fhir/R4/metadata"))
    assert statement["resourceType"] == "CapabilityStatement" and statement["fhirVersion"] == "4.0.1"
    listed = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert set(listed) == {"Patient", "Observation", "Device", "DeviceMetric", "Provenance", "Group"}
    assert [i["code"] for i in listed["Observation"]["interaction"]] == ["read", "search-type"]
    assert {p["name"] for p in listed["Observation"]["searchParam"]} == {"patient", "code", "date", "_count"}
    assert listed["Group"]["operation"][0]["name"] == "export"
    # Anything not listed is an OperationOutcome, never HTML.
    assert outcome_code(client.get("/fhir/R4/Encounter/1"), 404) == "not_supported"
    assert outcome_code(client.post("/fhir/R4/Observation", {}), 405) == "method_not_allowed"


def test_metadata_needs_a_verified_session(ward_clinician: Any) -> None:
    assert outcome_code(Client().get("/fhir/R4/metadata"), 401) == "not_authenticated"
    password_only = personas.verified_client(ward_clinician, otp=False)
    assert outcome_code(password_only.get("/fhir/R4/metadata"), 403) == "mfa_required"


def test_patient_is_a_pseudonym_without_identity(client: Client, p1: Any) -> None:
    found, _ = p1
    PatientIdentity.objects.update_or_create(patient=found, defaults={"mrn": "12345", "name": "Ada Lovelace"})
    resource = body(client.get("/fhir/R4/Patient/fhir-one"))
    assert resource["id"] == "fhir-one" and resource["active"] is True
    assert resource["identifier"] == [{"use": "secondary", "system": "urn:perfuse:pseudonym", "value": "fhir-one"}]
    assert "name" not in resource and "12345" not in str(resource)
    event = AuditEvent.objects.filter(action="patient.fhir.read").get()
    assert (event.subject, event.outcome) == ("fhir-one", "allowed")


def test_patient_identity_only_when_revealed_with_a_purpose(client: Client, p1: Any, oncall_nurse: Any) -> None:
    found, _ = p1
    PatientIdentity.objects.update_or_create(patient=found, defaults={"mrn": "12345", "name": "Ada Lovelace"})
    revealed = body(client.get("/fhir/R4/Patient/fhir-one", headers={"X-Perfuse-Reveal-Purpose": "bedside check"}))
    assert revealed["name"] == [{"use": "official", "text": "Ada Lovelace"}]
    mrn = [i for i in revealed["identifier"] if i.get("type")]
    assert mrn[0]["value"] == "12345" and mrn[0]["type"]["coding"][0]["code"] == "MR"
    reveal = AuditEvent.objects.filter(action="identity.reveal").get()
    assert (reveal.subject, reveal.purpose, reveal.outcome) == ("fhir-one", "bedside check", "allowed")
    # On-call staff may read the record but not reveal who it is: refused, audited.
    nurse = personas.verified_client(oncall_nurse)
    refused = nurse.get("/fhir/R4/Patient/fhir-one", headers={"X-Perfuse-Reveal-Purpose": "curious"})
    assert outcome_code(refused, 403) == "forbidden"
    assert AuditEvent.objects.filter(action="identity.reveal", outcome="denied").count() == 1


def test_other_ward_and_compliance_are_refused(p1: Any, other_ward_clinician: Any, compliance_officer: Any) -> None:
    for user in (other_ward_clinician, compliance_officer):
        c = personas.verified_client(user)
        assert outcome_code(c.get("/fhir/R4/Patient/fhir-one"), 403) == "forbidden"
        assert outcome_code(c.get(f"/fhir/R4/Observation?patient=fhir-one&{SPAN}"), 403) == "forbidden"
    assert outcome_code(Client().get("/fhir/R4/Patient/fhir-one"), 401) == "not_authenticated"
    denied = AuditEvent.objects.filter(action__startswith="patient.fhir.", outcome="denied", subject="fhir-one")
    assert denied.count() == 5


def test_raw_search_pages_with_next_links_and_every_id_resolves(client: Client, p1: Any) -> None:
    found, device = p1
    insert_readings(found, device, [(T0 + dt.timedelta(seconds=10 * i), 50.0 + i) for i in range(10)])
    pages = _pages(client, f"/fhir/R4/Observation?patient=fhir-one&code=tissue_o2&{SPAN}&_count=4")
    assert [len(p.get("entry", [])) for p in pages] == [4, 4, 2]
    assert {p["total"] for p in pages} == {10}
    entries = [e["resource"] for p in pages for e in p["entry"]]
    assert [e["valueQuantity"]["value"] for e in entries] == [50.0 + i for i in range(10)]
    first = entries[0]
    assert first["effectiveDateTime"] == "2026-01-10T08:00:00.000Z"
    assert first["valueQuantity"] == {"value": 50.0, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}
    assert first["device"] == {"reference": "Device/lumee-fhir-1"}
    assert first["subject"] == {"reference": "Patient/fhir-one"}
    assert first["code"]["coding"][0] == {
        "system": "https://perfuse.example/fhir/CodeSystem/metric",
        "code": "tissue_o2",
        "display": "Tissue O₂",
    }
    assert first["extension"] == [
        {"url": "https://perfuse.example/fhir/StructureDefinition/resolution", "valueCode": "raw"}
    ]
    assert len({e["id"] for e in entries}) == 10
    for entry in entries[:3]:
        again = body(client.get(f"/fhir/R4/Observation/{entry['id']}"))
        assert again == entry
    # Each page read is audited, with the span, as a read of the patient.
    reads = AuditEvent.objects.filter(action="patient.fhir.observations", subject="fhir-one")
    assert reads.count() == 3
    assert reads.first().detail["start"] == "2026-01-10T08:00:00.000Z"


def test_dense_series_comes_in_buckets_with_min_max_and_count(client: Client, p1: Any) -> None:
    found, device = p1
    # 6,000 readings in an hour: more than the history API's 5,000 points, so 1-minute buckets.
    points = [(T0 + dt.timedelta(milliseconds=600 * i), 40.0 + (i % 100) / 10) for i in range(6000)]
    points[1234] = (points[1234][0], 5.0)  # a short desaturation inside one minute
    insert_readings(found, device, points)
    pages = _pages(client, f"/fhir/R4/Observation?patient=fhir-one&code=tissue_o2&{SPAN}&_count=25")
    entries = [e["resource"] for p in pages for e in p["entry"]]
    history = patient_series(patient_id=found.id, metric="tissue_o2", start=T0, end=T0 + dt.timedelta(hours=1))
    assert history.resolution == "1m" and len(entries) == len(history.points) == 60
    for resource, point in zip(entries, history.points, strict=True):
        assert resource["extension"][0]["valueCode"] == "1m"
        assert resource["valueQuantity"]["value"] == pytest.approx(point["avg"])
        parts = {c["code"]["coding"][0]["code"]: c for c in resource["component"]}
        assert parts["minimum"]["valueQuantity"]["value"] == point["min"]
        assert parts["maximum"]["valueQuantity"]["value"] == point["max"]
        assert parts["count"]["valueInteger"] == point["count"]
    assert (
        sum(c["valueInteger"] for e in entries for c in e["component"] if c["code"]["coding"][0]["code"] == "count")
        == 6000
    )
    dip = entries[12]  # 1234 * 0.6 s = 740 s: the thirteenth minute
    assert dip["effectivePeriod"] == {"start": "2026-01-10T08:12:00.000Z", "end": "2026-01-10T08:13:00.000Z"}
    assert [c["valueQuantity"]["value"] for c in dip["component"] if c["code"]["coding"][0]["code"] == "minimum"] == [
        5.0
    ]
    # A bucket's id resolves to the same bucket, and its provenance names the device.
    assert body(client.get(f"/fhir/R4/Observation/{dip['id']}")) == dip
    provenance = body(client.get(f"/fhir/R4/Provenance?target=Observation/{dip['id']}"))["entry"][0]["resource"]
    assert {"reference": "Device/lumee-fhir-1"} in [a["who"] for a in provenance["agent"]]


def test_code_tokens_select_metrics(client: Client, p1: Any) -> None:
    found, device = p1
    insert_readings(found, device, [(T0, 60.0)])
    insert_readings(found, device, [(T0, 97.0), (T0 + dt.timedelta(seconds=5), 96.0)], metric="spo2", first_seq=100)
    everything = body(client.get(f"/fhir/R4/Observation?patient=fhir-one&{SPAN}"))
    assert everything["total"] == 3
    spo2 = body(client.get(f"/fhir/R4/Observation?patient=Patient/fhir-one&code=http://loinc.org|59408-5&{SPAN}"))
    assert spo2["total"] == 2
    codes = spo2["entry"][0]["resource"]["code"]["coding"]
    assert {(c["system"], c["code"]) for c in codes} >= {
        ("http://loinc.org", "59408-5"),
        ("urn:iso:std:iso:11073:10101", "150456"),
    }
    assert body(client.get(f"/fhir/R4/Observation?patient=fhir-one&code=1234-5&{SPAN}"))["total"] == 0


@pytest.mark.parametrize(
    ("query", "code"),
    [
        (SPAN, "patient_required"),
        ("patient=fhir-one&date=ge2026-13-01", "invalid_date"),
        ("patient=fhir-one&date=ge2026-01-10T08:00:00", "invalid_date"),
        ("patient=fhir-one&date=ge2026-01-10&date=lt2026-01-09", "invalid_range"),
        ("patient=fhir-one&date=ge2026-01-01&date=le2026-03-01", "range_too_long"),
        (f"patient=fhir-one&{SPAN}&_count=0", "invalid_count"),
        (f"patient=fhir-one&{SPAN}&_cursor=garbage", "invalid_cursor"),
    ],
)
def test_bad_search_parameters_are_operation_outcomes(client: Client, p1: Any, query: str, code: str) -> None:
    assert outcome_code(client.get(f"/fhir/R4/Observation?{query}"), 400) == code


def test_unknown_observation_is_refused_like_an_unknown_patient(client: Client, p1: Any) -> None:
    _, device = p1
    assert (
        outcome_code(client.get(f"/fhir/R4/Observation/r-{device.pk}-tissueo2-1-1768032000000000"), 403) == "forbidden"
    )
    assert outcome_code(client.get("/fhir/R4/Observation/not-an-id"), 404) == "not_found"
    assert observation_id_parse("1m-1-tissueo2-61") is None  # not on a bucket boundary


def test_device_and_its_calibrations(client: Client, p1: Any, device_admin: Any, other_ward_clinician: Any) -> None:
    _, device = p1
    Calibration.objects.create(
        device=device, calibration_id="cal-a", coefficients={"gain": 1.05, "offset": -0.5}, effective_from=T0
    )
    resource = body(client.get("/fhir/R4/Device/lumee-fhir-1"))
    assert resource["identifier"] == [{"system": "urn:perfuse:device", "value": "lumee-fhir-1"}]
    assert resource["status"] == "active"
    metrics = body(personas.verified_client(device_admin).get("/fhir/R4/DeviceMetric?source=Device/lumee-fhir-1"))
    metric = metrics["entry"][0]["resource"]
    assert metric["source"] == {"reference": "Device/lumee-fhir-1"}
    calibration = metric["calibration"][0]
    assert calibration["time"] == "2026-01-10T08:00:00.000Z" and calibration["state"] == "calibrated"
    values = {e["url"]: e.get("valueDecimal", e.get("valueString")) for e in calibration["extension"][0]["extension"]}
    assert values == {"id": "cal-a", "gain": 1.05, "offset": -0.5}
    other = personas.verified_client(other_ward_clinician)
    assert outcome_code(other.get("/fhir/R4/Device/lumee-fhir-1"), 403) == "forbidden"
    assert outcome_code(other.get("/fhir/R4/Device/no-such-device"), 403) == "forbidden"


def test_fhir_reads_are_in_the_accounting_of_disclosures(client: Client, p1: Any) -> None:
    client.get(f"/fhir/R4/Observation?patient=fhir-one&{SPAN}")
    client.get("/fhir/R4/Patient/fhir-one")
    rows = patient_disclosures(pseudonym="fhir-one", start=None, end=None)
    assert [r["description"] for r in rows] == [
        "Read the patient's telemetry (FHIR Observation search)",
        "Read the patient's FHIR Patient resource",
    ]
    assert rows[0]["recipient"] == "ward-clinician (clinician)"


def test_every_emitted_error_validates() -> None:
    # The builder itself, for statuses the routes above do not reach.
    for status in (400, 401, 403, 404, 405, 410, 429, 500):
        valid(operation_outcome(status=status, code="x", detail="y"))


def test_openapi_lists_what_the_capability_statement_lists(client: Client) -> None:
    paths = Client().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()["paths"]
    fhir = {p for p in paths if p.startswith("/fhir/R4/")}
    assert fhir == {
        "/fhir/R4/metadata",
        "/fhir/R4/Patient/{id}",
        "/fhir/R4/Observation",
        "/fhir/R4/Observation/{id}",
        "/fhir/R4/Device/{id}",
        "/fhir/R4/DeviceMetric",
        "/fhir/R4/Provenance",
        "/fhir/R4/Group/{ward}/$export",
        "/fhir/R4/$export-status/{export_id}",
        "/fhir/R4/$export-file/{export_id}/{type}.ndjson",
    }
    search = {p["name"] for p in paths["/fhir/R4/Observation"]["get"]["parameters"]}
    assert search == {"patient", "code", "date", "_count"}
    assert set(paths["/fhir/R4/$export-status/{export_id}"]) == {"get", "delete"}


def test_break_glass_opens_one_patient_not_a_ward(p1: Any, compliance_officer: Any) -> None:
    found, device = p1
    insert_readings(found, device, [(T0, 61.0)])
    officer = personas.verified_client(compliance_officer)
    granted = officer.post(
        "/audit/break-glass/",
        {"pseudonym": "fhir-one", "reason": "incident_review", "purpose": "Incident 2026-03 review", "minutes": 30},
    )
    assert granted.status_code == 302
    bundle = body(officer.get(f"/fhir/R4/Observation?patient=fhir-one&{SPAN}"))
    assert bundle["total"] == 1
    read = AuditEvent.objects.get(action="patient.fhir.observations", outcome="allowed")
    assert read.break_glass and read.detail["reason"] == "break_glass"
    export = officer.get("/fhir/R4/Group/icu-a/$export", headers={"Prefer": "respond-async"})
    assert outcome_code(export, 403) == "forbidden"


def test_request_gates_answer_fhir_paths_in_fhir(client: Client, p1: Any) -> None:
    """A NUL in the query and a CSRF refusal are answered before any view: still OperationOutcome."""
    assert outcome_code(client.get("/fhir/R4/Observation?patient=fhir%00one"), 400) == "invalid_parameter"
    strict = personas.verified_client(personas.staff("csrf-fhir", "clinician", ["icu-a"]), enforce_csrf_checks=True)
    assert (
        outcome_code(strict.delete("/fhir/R4/$export-status/00000000-0000-0000-0000-000000000000"), 403)
        == "csrf_failed"
    )


def test_a_ward_the_patient_left_sees_only_its_stay_over_fhir(
    client: Client, p1: Any, ward_b: Ward, other_ward_clinician: Any
) -> None:
    """Staff of the old ward keep the time the patient was theirs, over FHIR as over REST: the
    search is clipped to their stay and an Observation after the transfer is not theirs."""
    found, device = p1
    t0 = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=30)
    insert_readings(found, device, [(t0 + dt.timedelta(minutes=i), 60.0 + i) for i in range(10)])
    patient_transfer(pseudonym=found.pseudonym, ward_code=ward_b.code, at=t0 + dt.timedelta(minutes=4, seconds=30))
    span = urllib.parse.urlencode([("date", f"ge{iso(t0)}"), ("date", f"lt{iso(t0 + dt.timedelta(minutes=20))}")])
    url = f"/fhir/R4/Observation?patient={found.pseudonym}&code=tissue_o2&{span}"
    old = [e["resource"] for page in _pages(client, url) for e in page.get("entry", [])]
    new_client = personas.verified_client(other_ward_clinician)
    new = [e["resource"] for page in _pages(new_client, url) for e in page.get("entry", [])]
    assert [o["valueQuantity"]["value"] for o in old] == [60.0, 61.0, 62.0, 63.0, 64.0]
    assert len(new) == 10
    after = next(o for o in new if o["valueQuantity"]["value"] == 69.0)
    assert outcome_code(client.get(f"/fhir/R4/Observation/{after['id']}"), 404) == "not_found"
    assert body(new_client.get(f"/fhir/R4/Observation/{after['id']}"))["id"] == after["id"]
    later = urllib.parse.urlencode([("date", f"ge{iso(t0 + dt.timedelta(minutes=6))}")])
    empty = body(client.get(f"/fhir/R4/Observation?patient={found.pseudonym}&{later}"))
    assert empty["total"] == 0 and not empty.get("entry")
