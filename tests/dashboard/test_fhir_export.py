"""Bulk FHIR export (Group/{ward}/$export): kick-off, polling, files, requester-only downloads,
retention, cancellation, failure, and the job run by the engine's processor tick."""

from __future__ import annotations

import datetime as dt
import json
import urllib.parse
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connection, transaction
from django.test import AsyncClient, Client

from audit.models import AuditEvent
from audit.selectors import patient_disclosures
from dashboard.fhir import exports
from dashboard.models import FhirExport, FhirExportChunk
from telemetry.engine import engine_tick, load_processors
from telemetry.models import Ward
from tests import personas
from tests.fhir_support import body, ndjson, outcome_code, streamed
from tests.live_support import insert_readings, patient

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2026, 1, 10, 8, 0, tzinfo=dt.UTC)
ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


@pytest.fixture
def client(ward_clinician: Any) -> Client:
    return personas.verified_client(ward_clinician)


@pytest.fixture
def ward_data(ward_a: Ward, ward_b: Ward) -> dict[str, Any]:
    one, d1 = patient("exp-one", ward_a, "lumee-exp-1")
    two, d2 = patient("exp-two", ward_a, "lumee-exp-2")
    elsewhere, d3 = patient("exp-other-ward", ward_b, "lumee-exp-3")
    insert_readings(one, d1, [(T0 + dt.timedelta(seconds=i), 50.0 + i) for i in range(7)])
    insert_readings(one, d1, [(T0, 97.0)], metric="spo2", first_seq=100)
    insert_readings(two, d2, [(T0 + dt.timedelta(seconds=i), 60.0) for i in range(4)])
    insert_readings(elsewhere, d3, [(T0, 10.0)])
    return {"one": one, "two": two}


def _path(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _run_engine(times: int = 200) -> None:
    """Engine loops as run_engine does them: every configured processor's tick."""
    processors = load_processors()
    for _ in range(times):
        engine_tick(processors, now=dt.datetime.now(dt.UTC))
        if not FhirExport.objects.filter(state=FhirExport.State.QUEUED).exists():
            return


def _kick_off(client: Client, query: str = "") -> str:
    response = client.get(f"/fhir/R4/Group/icu-a/$export{query}", headers=ASYNC)
    body(response, 202)
    return _path(response["Content-Location"])


def test_export_runs_in_the_engine_and_serves_ndjson(client: Client, ward_data: Any, settings: Any) -> None:
    settings.PERFUSE_FHIR_EXPORT_CHUNK_ROWS = 3  # several chunks per file: the keyset walk resumes
    status_url = _kick_off(client)
    running = client.get(status_url)
    body(running, 202)
    assert running["X-Progress"].startswith("0%")

    _run_engine()
    done = client.get(status_url)
    assert done.status_code == 200 and done["Content-Type"] == "application/json"
    manifest = json.loads(done.content)
    assert manifest["requiresAccessToken"] is True and manifest["error"] == []
    assert manifest["request"].endswith("/fhir/R4/Group/icu-a/$export")
    outputs = {o["type"]: o for o in manifest["output"]}
    assert {t: o["count"] for t, o in outputs.items()} == {"Patient": 2, "Device": 2, "Observation": 12}

    files = {}
    for kind, output in outputs.items():
        response = client.get(_path(output["url"]))
        assert response.status_code == 200 and response["Content-Type"] == "application/fhir+ndjson"
        files[kind] = ndjson(streamed(response))
    assert {p["id"] for p in files["Patient"]} == {"exp-one", "exp-two"}
    assert all("name" not in p for p in files["Patient"])
    assert {d["id"] for d in files["Device"]} == {"lumee-exp-1", "lumee-exp-2"}
    observations = files["Observation"]
    assert len(observations) == 12 and len({o["id"] for o in observations}) == 12
    assert sorted(
        o["valueQuantity"]["value"] for o in observations if o["subject"]["reference"] == "Patient/exp-one"
    ) == [
        *(50.0 + i for i in range(7)),
        97.0,
    ]
    # Exported ids are the API's: each resolves to the same Observation.
    assert body(client.get(f"/fhir/R4/Observation/{observations[0]['id']}")) == observations[0]


def test_every_export_is_a_disclosure_of_each_patient(client: Client, ward_data: Any) -> None:
    status_url = _kick_off(client, "?_type=Observation")
    _run_engine()
    assert client.get(status_url).status_code == 200
    requested = AuditEvent.objects.get(action="fhir.export.requested")
    assert requested.detail["patients"] == ["exp-one", "exp-two"] and requested.actor_username == "ward-clinician"
    for pseudonym in ("exp-one", "exp-two"):
        rows = patient_disclosures(pseudonym=pseudonym, start=None, end=None)
        assert [r["description"] for r in rows] == ["Exported the patient's data (FHIR bulk export)"]
        assert rows[0]["recipient"] == "ward-clinician (clinician)"
    assert patient_disclosures(pseudonym="exp-other-ward", start=None, end=None) == []


def test_since_and_type_select_what_is_exported(client: Client, ward_data: Any) -> None:
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    status_url = _kick_off(client, f"?_type=Observation&_since={later.isoformat().replace('+00:00', 'Z')}")
    _run_engine()
    manifest = json.loads(client.get(status_url).content)
    assert manifest["output"] == []  # nothing was ingested after _since
    status_url = _kick_off(client, "?_type=Patient")
    _run_engine()
    assert [o["type"] for o in json.loads(client.get(status_url).content)["output"]] == ["Patient"]


def test_only_the_requester_may_poll_or_download(client: Client, ward_data: Any, oncall_nurse: Any) -> None:
    status_url = _kick_off(client)
    _run_engine()
    file_url = _path(json.loads(client.get(status_url).content)["output"][0]["url"])
    colleague = personas.verified_client(oncall_nurse)  # same ward, not the requester
    assert outcome_code(colleague.get(status_url), 404) == "not_found"
    assert outcome_code(colleague.get(file_url), 404) == "not_found"
    assert outcome_code(colleague.delete(status_url), 404) == "not_found"
    denied = AuditEvent.objects.filter(outcome="denied", actor_username="oncall-nurse")
    assert sorted(denied.values_list("action", flat=True)) == [
        "fhir.export.cancelled",
        "fhir.export.downloaded",
        "fhir.export.status",
    ]
    assert all(e.detail["reason"] == "not_requester" for e in denied)
    assert client.get(file_url).status_code == 200  # the requester still can
    assert outcome_code(Client().get(file_url), 401) == "not_authenticated"


def test_files_are_deleted_after_the_retention_time(client: Client, ward_data: Any) -> None:
    status_url = _kick_off(client, "?_type=Patient")
    _run_engine()
    job = FhirExport.objects.get()
    assert job.expires_at is not None
    engine_tick(load_processors(), now=job.expires_at + dt.timedelta(seconds=1))
    assert not FhirExport.objects.exists() and not FhirExportChunk.objects.exists()
    assert outcome_code(client.get(status_url), 404) == "not_found"
    assert AuditEvent.objects.filter(action="fhir.export.expired", detail__export=str(job.pk)).count() == 1


def test_delete_cancels_and_removes_the_export(client: Client, ward_data: Any) -> None:
    status_url = _kick_off(client)
    response = client.delete(status_url)
    body(response, 202)
    assert not FhirExport.objects.exists()
    assert outcome_code(client.get(status_url), 404) == "not_found"
    strict = personas.verified_client(
        personas.staff("csrf-clinician", "clinician", ["icu-a"]), enforce_csrf_checks=True
    )
    url = _kick_off(strict)
    assert outcome_code(strict.delete(url), 403) == "csrf_failed"
    assert FhirExport.objects.count() == 1


@pytest.mark.parametrize(
    ("query", "headers", "status", "code"),
    [
        ("", {}, 400, "respond_async_required"),
        ("?_type=Encounter", ASYNC, 400, "unsupported_type"),
        ("?_since=yesterday", ASYNC, 400, "invalid_date"),
        ("?_since=2026-01-01", ASYNC, 400, "invalid_since"),
        ("?_outputFormat=text/csv", ASYNC, 400, "unsupported_format"),
    ],
)
def test_bad_kick_offs(
    client: Client, ward_a: Ward, query: str, headers: dict[str, str], status: int, code: str
) -> None:
    assert outcome_code(client.get(f"/fhir/R4/Group/icu-a/$export{query}", headers=headers), status) == code


def test_other_ward_compliance_and_limit(
    ward_data: Any, client: Client, other_ward_clinician: Any, compliance_officer: Any
) -> None:
    for user in (other_ward_clinician, compliance_officer):
        refused = personas.verified_client(user).get("/fhir/R4/Group/icu-a/$export", headers=ASYNC)
        assert outcome_code(refused, 403) == "forbidden"
    assert outcome_code(client.get("/fhir/R4/Group/no-such-ward/$export", headers=ASYNC), 403) == "forbidden"
    _kick_off(client)
    _kick_off(client)
    assert outcome_code(client.get("/fhir/R4/Group/icu-a/$export", headers=ASYNC), 429) == "too_many_exports"


def test_a_failing_job_is_marked_failed_and_the_engine_goes_on(
    client: Client, ward_data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    status_url = _kick_off(client)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(exports, "_lines", broken)
    engine_tick(load_processors(), now=dt.datetime.now(dt.UTC))  # does not raise
    job = FhirExport.objects.get()
    assert job.state == FhirExport.State.FAILED and "disk on fire" in job.error
    assert outcome_code(client.get(status_url), 500) == "export_failed"


def test_a_crash_mid_chunk_leaves_neither_chunk_nor_cursor_move(client: Client, ward_data: Any, settings: Any) -> None:
    settings.PERFUSE_FHIR_EXPORT_CHUNK_ROWS = 2
    _kick_off(client, "?_type=Observation")
    with pytest.raises(RuntimeError), transaction.atomic():
        job = exports.export_claim()
        assert job is not None
        exports.export_advance(job, now=dt.datetime.now(dt.UTC), budget=2)
        raise RuntimeError("engine killed before commit")
    job = FhirExport.objects.get()
    assert job.cursor["step"] == 0 and not FhirExportChunk.objects.exists()
    _run_engine()
    counts = exports.export_outputs(FhirExport.objects.get())
    assert counts == [("Observation", 12)]


@pytest.mark.django_db(transaction=True)
async def test_a_file_streams_through_the_asgi_handler(ward_a: Ward, ward_b: Ward) -> None:
    """As Daphne serves it: the async handler consumes the file chunk by chunk."""

    def prepare() -> tuple[Client, str]:
        one, device = patient("exp-asgi", ward_a, "lumee-exp-asgi")
        insert_readings(one, device, [(T0 + dt.timedelta(seconds=i), 55.0) for i in range(5)])
        sync_client = personas.verified_client(personas.staff("asgi-clinician", "clinician", ["icu-a"]))
        status_url = _kick_off(sync_client, "?_type=Observation")
        _run_engine()
        return sync_client, _path(json.loads(sync_client.get(status_url).content)["output"][0]["url"])

    sync_client, file_url = await sync_to_async(prepare)()
    async_client = AsyncClient()
    async_client.cookies = sync_client.cookies
    response = await async_client.get(file_url)
    assert response.status_code == 200
    lines = ndjson(b"".join([part async for part in response.streaming_content]))
    assert len(lines) == 5 and {o["subject"]["reference"] for o in lines} == {"Patient/exp-asgi"}


def test_since_walks_hours_of_sample_time_and_keeps_what_was_ingested_after_it(
    client: Client, ward_a: Ward, settings: Any
) -> None:
    settings.PERFUSE_FHIR_EXPORT_CHUNK_ROWS = 4
    late, device = patient("exp-late", ward_a, "lumee-exp-late")
    # Five hours of readings, every ten minutes; the odd ones arrived (were ingested) long ago.
    insert_readings(late, device, [(T0 + dt.timedelta(minutes=10 * i), float(i)) for i in range(30)])
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE telemetry_reading SET ingest_time = '2026-01-01T00:00:00Z' WHERE patient_id = %s AND seq %% 2 = 0",
            [late.pk],
        )
    status_url = _kick_off(client, "?_type=Observation&_since=2026-06-01T00:00:00Z")
    _run_engine()
    output = json.loads(client.get(status_url).content)["output"]
    lines = ndjson(streamed(client.get(_path(output[0]["url"]))))
    assert sorted(o["valueQuantity"]["value"] for o in lines) == [float(i) for i in range(30) if i % 2 == 0]
    assert FhirExportChunk.objects.count() >= 5  # one window of sample time (or less) per chunk
