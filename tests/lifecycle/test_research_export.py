"""The research export: de-identified files (no pseudonym, MRN or name; subjects re-keyed per
export; times shifted by one secret offset per patient; rare values clipped), small cohorts
refused, the export a disclosure of each patient, files only for the requester, expiry."""

from __future__ import annotations

import datetime as dt
import io
import json
from typing import Any

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from audit.models import AuditEvent
from audit.selectors import patient_disclosures
from telemetry.lifecycle.models import ResearchExport, ResearchSubject
from telemetry.lifecycle.research import offset_unseal
from telemetry.lifecycle.retention import research_exports_expire
from telemetry.models import Patient, PatientIdentity
from tests import personas
from tests.lifecycle.research_support import OUTLIERS, START, cohort

pytestmark = pytest.mark.django_db


@pytest.fixture
def times(settings: Any, ward_a: Any) -> dict[str, list[dt.datetime]]:
    settings.PERFUSE_RESEARCH_MIN_PATIENTS = 3
    return cohort("icu-a", 4)


def _request(client: Any, purpose: str = "study 2026-04 (IRB 881)") -> Any:
    span = {"start": (START - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"), "end": ""}
    span["end"] = (START + dt.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M")
    return client.post("/lifecycle/research/", {"ward": "icu-a", "purpose": purpose, **span})


def _files(client: Any, export: ResearchExport) -> dict[str, bytes]:
    found = {}
    for name in ("readings.parquet", "readings.csv", "about.json"):
        response = client.get(f"/lifecycle/research/{export.pk}/{name}")
        assert response.status_code == 200, name
        found[name] = response.content
    return found


def test_the_files_carry_no_identity_and_shift_each_patient_by_one_secret_offset(times, compliance_officer):
    client = personas.verified_client(compliance_officer)
    assert _request(client).status_code == 302
    export = ResearchExport.objects.get()
    assert (export.patients, export.rows, export.requester_id) == (4, 4 * 30 + len(OUTLIERS), compliance_officer.pk)
    files = _files(client, export)
    table = pq.read_table(io.BytesIO(files["readings.parquet"]))
    csv = pacsv.read_csv(io.BytesIO(files["readings.csv"]))
    assert table.column_names == ["subject", "metric", "unit", "time", "value", "signal_quality"]
    assert csv.num_rows == table.num_rows == export.rows

    # No pseudonym, MRN or name anywhere: not in the bytes, not in any decoded cell or metadata.
    secrets_of = [p for p in times] + [v for i in PatientIdentity.objects.all() for v in (i.mrn, i.name)]
    parquet_meta = str(pq.ParquetFile(io.BytesIO(files["readings.parquet"])).metadata.metadata)
    cells = " ".join(str(v) for column in table.columns for v in column.to_pylist())
    for text in [cells, parquet_meta, *(f.decode("latin-1") for f in files.values())]:
        for secret in secrets_of:
            assert secret not in text

    # One offset per patient, the same for every reading of theirs, equal to the sealed one.
    sealed = {s.patient.pseudonym: offset_unseal(s) for s in ResearchSubject.objects.select_related("patient")}
    assert set(sealed) == set(times) and all(days != 0 for days in sealed.values())
    by_subject: dict[str, list[dt.datetime]] = {}
    for subject, t in zip(table.column("subject").to_pylist(), table.column("time").to_pylist(), strict=True):
        by_subject.setdefault(subject, []).append(t)
    assert len(by_subject) == 4
    matched = set()
    for shifted in by_subject.values():
        owners = [p for p, days in sealed.items() if sorted(t - dt.timedelta(days=days) for t in shifted) == times[p]]
        assert len(owners) == 1
        matched.add(owners[0])
    assert matched == set(times)

    # Rare values clipped to the cohort's 1st..99th percentiles, as listed in about.json.
    about = json.loads(files["about.json"])
    lo, hi = about["clip_bounds"]["tissue_o2"]
    values = table.column("value").to_pylist()
    assert lo <= min(values) and max(values) <= hi and 2.0 not in values and 99.5 not in values
    assert about["min_patients"] == 3 and about["subjects"] == 4


def test_each_export_is_a_disclosure_of_each_patient_with_its_purpose(times, compliance_officer):
    _request(personas.verified_client(compliance_officer), purpose="sepsis study")
    export = ResearchExport.objects.get()
    rows = patient_disclosures(pseudonym="p-r2", start=None, end=None)
    research = [r for r in rows if r["description"].startswith("Disclosed de-identified for research")]
    assert [(r["purpose"], r["recipient"]) for r in research] == [("sepsis study", "compliance-officer (compliance)")]
    created = AuditEvent.objects.get(action="research.export.created")
    assert created.detail["export"] == str(export.pk) and created.detail["patients"] == 4
    assert created.detail["parameters"]["clip_percent"] == 1 and created.purpose == "sepsis study"


def test_every_export_re_keys_the_subjects(times, compliance_officer):
    client = personas.verified_client(compliance_officer)
    _request(client)
    _request(client)
    first, second = ResearchExport.objects.order_by("created_at")
    subjects = [
        set(pq.read_table(io.BytesIO(_files(client, e)["readings.parquet"])).column("subject").to_pylist())
        for e in (first, second)
    ]
    assert len(subjects[0]) == len(subjects[1]) == 4 and not subjects[0] & subjects[1]


def test_a_cohort_smaller_than_k_is_refused(times, compliance_officer, settings):
    settings.PERFUSE_RESEARCH_MIN_PATIENTS = 5
    response = _request(personas.verified_client(compliance_officer))
    assert response.status_code == 400 and b"at least 5 are needed" in response.content
    assert not ResearchExport.objects.exists()
    refusal = AuditEvent.objects.get(action="research.export.created")
    assert (refusal.outcome, refusal.detail["reason"]) == ("denied", "cohort_too_small")
    assert not AuditEvent.objects.filter(action="research.export").exists()


def test_the_files_are_the_requesters_only_and_expire(times, compliance_officer):
    client = personas.verified_client(compliance_officer)
    _request(client)
    export = ResearchExport.objects.get()
    url = f"/lifecycle/research/{export.pk}/readings.csv"
    colleague = personas.verified_client(personas.staff("other-officer", "compliance"))
    assert colleague.get(url).status_code == 404
    assert client.get(url).status_code == 200
    assert AuditEvent.objects.filter(action="research.export.downloaded", outcome="allowed").count() == 1

    assert research_exports_expire(now=export.expires_at - dt.timedelta(seconds=1)) == 0
    assert research_exports_expire(now=export.expires_at + dt.timedelta(seconds=1)) == 1
    assert not ResearchExport.objects.exists() and not ResearchSubject.objects.exists()
    assert AuditEvent.objects.get(action="research.export.expired").detail["files"] == 3
    assert client.get(url).status_code == 404
    assert Patient.objects.count() == 4  # the export went, nothing of the patients
