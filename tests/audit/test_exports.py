"""Exports: no CSV cell a spreadsheet would run as a formula (audit events, disclosures, alarm
fatigue), and a FHIR AuditEvent export that pages to the end instead of stopping silently."""

from __future__ import annotations

import csv
import io
import json

import pytest
from fhir.resources.R4B.auditevent import AuditEvent as FhirAuditEvent
from fhir.resources.R4B.bundle import Bundle

from audit.models import AuditEvent
from audit.trail import Actor, audit_record
from config.csv import csv_cell
from tests import factories, personas

pytestmark = pytest.mark.django_db

FORMULAS = ['=HYPERLINK("http://evil.example","open")', "+1+2", "-2+3", "@SUM(A1:A9)", "\tcmd", "\rcmd"]


def test_csv_cell_neutralises_formula_starts_only():
    assert [csv_cell(f) for f in FORMULAS] == ["'" + f for f in FORMULAS]
    assert csv_cell("plain text") == "plain text"
    assert csv_cell("a=b") == "a=b"
    assert csv_cell(-3.5) == -3.5  # a number stays a number
    assert csv_cell(None) == ""


@pytest.fixture
def officer():
    return personas.staff("officer", "compliance")


def _hostile_reads(subject: str) -> None:
    """Allowed reads whose actor, user agent and purpose were typed by someone else."""
    for text in FORMULAS:
        actor = Actor(user_id=None, username=text, role="clinician", source_address="10.0.0.9", user_agent=text)
        audit_record(actor=actor, action="patient.chart", subject=subject, purpose=text)


def test_audit_csv_export_neutralises_formulas(officer):
    _hostile_reads("pt-x")
    client = personas.verified_client(officer)
    body = b"".join(client.get("/audit/export.csv?patient=pt-x").streaming_content).decode()
    rows = [r for r in csv.DictReader(io.StringIO(body)) if r["action"] == "patient.chart"]
    expected = sorted("'" + f for f in FORMULAS)
    for column in ("actor_username", "purpose", "user_agent"):
        assert sorted(r[column] for r in rows) == expected


def test_disclosures_csv_neutralises_formulas(officer):
    _hostile_reads("pt-x")
    client = personas.verified_client(officer)
    body = client.get("/audit/patients/pt-x/disclosures/?format=csv").content.decode()
    rows = list(csv.reader(io.StringIO(body)))[1:]
    assert sorted(r[1] for r in rows) == sorted(f"'{f} (clinician)" for f in FORMULAS)
    assert sorted(r[3] for r in rows) == sorted("'" + f for f in FORMULAS)


def test_fatigue_csv_neutralises_formulas():
    factories.ward("=icu")
    factories.device(ward_code="=icu", patient="@pt")
    clinician = personas.staff("clin", "clinician", ["=icu"])
    body = personas.verified_client(clinician).get("/alarms/fatigue.csv?days=7").content.decode()
    rows = list(csv.reader(io.StringIO(body)))[1:]
    assert {r[1] for r in rows} == {"'=icu"}
    assert {r[2] for r in rows} == {"", "'@pt"}
    assert all(not cell.startswith(("=", "+", "-", "@", "\t", "\r")) for row in rows for cell in row)


# ---- FHIR: paged, never cut short ----------------------------------------------------------


def _pages(client, url: str) -> list[Bundle]:
    bundles = []
    while url:
        response = client.get(url)
        assert response.status_code == 200 and response["Content-Type"].startswith("application/fhir+json")
        bundle = Bundle.model_validate(json.loads(response.content))
        bundles.append(bundle)
        url = next((link.url for link in bundle.link or [] if link.relation == "next"), None)
    return bundles


def test_fhir_export_pages_to_the_last_event_with_total_and_next(officer):
    actor = Actor(user_id=None, username="dr-a", role="clinician")
    for _ in range(5):
        audit_record(actor=actor, action="patient.chart", subject="pt-a")
    client = personas.verified_client(officer)
    bundles = _pages(client, "/audit/export.fhir.json?patient=pt-a&_count=2")
    # The snapshot is fixed by the first page: the 5 reads and that page's own export event.
    first_export = AuditEvent.objects.filter(action="audit.export", subject="pt-a").order_by("id").first()
    assert first_export is not None
    expected = list(
        AuditEvent.objects.filter(subject="pt-a", id__lte=first_export.id).order_by("id").values_list("id", flat=True)
    )
    ids = [int(entry.resource.id) for bundle in bundles for entry in bundle.entry or []]
    assert ids == expected and len(expected) == 6
    assert [len(bundle.entry or []) for bundle in bundles] == [2, 2, 2]
    assert {bundle.total for bundle in bundles} == {6} and {bundle.type for bundle in bundles} == {"searchset"}
    for bundle in bundles:
        for entry in bundle.entry or []:
            FhirAuditEvent.model_validate(entry.resource.model_dump())
    # Every page request is audited, the later ones too.
    assert AuditEvent.objects.filter(action="audit.export", subject="pt-a").count() == 3


def test_fhir_export_refuses_a_page_size_beyond_the_limit(officer):
    client = personas.verified_client(officer)
    for bad in ("_count=0", "_count=100000", "_count=x", "after=y"):
        response = client.get(f"/audit/export.fhir.json?{bad}")
        assert response.status_code == 400
        assert response.json()["resourceType"] == "OperationOutcome"
    assert AuditEvent.objects.filter(action="audit.export", outcome="denied").count() == 4
