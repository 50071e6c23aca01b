"""The ward workflow over HTTP (dashboard/flow/): every act is a confirmation page first (nothing
changes, a read is audited), then the act on `confirm=yes`, audited by its service, refused
through the access layer for the wrong role or ward, and heard live by the ward's open overview."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from alerts.models import Alarm
from alerts.services import alarm_raise, rule_current_ward
from alerts.vocabulary import Kind, State
from audit.models import AuditEvent
from config.asgi import application
from dashboard import schemas
from telemetry.models import Assignment, Patient, PatientIdentity
from telemetry.selectors import devices_by_patient
from tests import factories
from tests.live_support import Persona, persona

FLOW = "/ward/flow/"


def _devices(pseudonym: str) -> list[str]:
    patient = Patient.objects.get(pseudonym=pseudonym)
    return devices_by_patient(patient_ids=[patient.id])[patient.id]


def _last(action: str) -> AuditEvent:
    event = AuditEvent.objects.filter(action=action).order_by("-id").first()
    assert event is not None, action
    return event


def _messages(client: Client) -> str:
    return client.get(FLOW).content.decode()


@pytest.fixture
def wards() -> dict[str, Any]:
    ward_a, ward_b = factories.ward("icu-a"), factories.ward("icu-b")
    for device_id in ("dev-a1", "dev-a2", "dev-a3"):
        factories.device(ward_a.code, device_id=device_id)
    return {
        "a": ward_a,
        "b": ward_b,
        "nurse": persona("oncall", ward_a),
        "clinician": persona("clinician", ward_a),
        "other": persona("clinician", ward_b),
    }


@pytest.mark.django_db
def test_admit_with_a_scanned_device_is_confirmed_then_applied(wards: dict[str, Any]) -> None:
    nurse = wards["nurse"].client()
    page = nurse.get(FLOW)
    assert page.status_code == 200
    html = page.content.decode()
    assert 'name="device_id"' in html and 'autocomplete="off"' in html and "<script>" not in html
    form = {"ward_code": "icu-a", "bed": "12", "device_id": "  dev-a1 ", "mrn": "M-77", "name": "Ann Example"}
    preview = nurse.post("/ward/flow/admit", form)
    assert preview.status_code == 200
    text = preview.content.decode()
    assert "Admit a new patient to icu-a?" in text and 'name="confirm" value="yes"' in text
    assert 'value="dev-a1"' in text  # the scanned id, trimmed, carried into the confirmation
    assert not Patient.objects.exists()  # the confirmation step changes nothing
    assert (_last("ward.flow.confirm").outcome, _last("ward.flow.confirm").detail["act"]) == ("allowed", "admit")

    done = nurse.post("/ward/flow/admit", {**form, "device_id": "dev-a1", "confirm": "yes"})
    assert done.status_code == 302 and done["Location"] == FLOW
    patient = Patient.objects.get()
    assert (patient.ward.code, patient.bed, _devices(patient.pseudonym)) == ("icu-a", "12", ["dev-a1"])
    assert PatientIdentity.objects.get(patient=patient).mrn == "M-77"
    admitted = _last("patient.admitted")
    assert (admitted.subject, admitted.actor_username) == (patient.pseudonym, wards["nurse"].user.username)
    assert _last("device.associated").subject == patient.pseudonym
    listing = _messages(nurse)
    assert f"{patient.pseudonym} admitted to icu-a." in listing and "bed 12" in listing


@pytest.mark.django_db
def test_pick_an_adt_patient_associate_swap_and_release(wards: dict[str, Any]) -> None:
    from telemetry.stays import patient_admit

    patient_admit(pseudonym="p-adt", ward_code="icu-a", bed="4", mrn="M-1")  # as the ADT feed does
    clinician = wards["clinician"].client()
    assert "p-adt" in clinician.get(FLOW).content.decode()
    act = "/ward/flow/patients/p-adt/"
    assert clinician.post(act + "associate", {"device_id": "dev-a2"}).status_code == 200
    assert _devices("p-adt") == []
    assert clinician.post(act + "associate", {"device_id": "dev-a2", "confirm": "yes"}).status_code == 302
    assert _devices("p-adt") == ["dev-a2"]
    swap = {"old_device_id": "dev-a2", "new_device_id": "dev-a3", "confirm": "yes"}
    assert clinician.post(act + "swap", swap).status_code == 302
    assert _devices("p-adt") == ["dev-a3"]
    swapped = _last("device.swapped").detail
    assert (swapped["device"], swapped["replaced"], swapped["ward"]) == ("dev-a3", "dev-a2", "icu-a")
    assert clinician.post(act + "release", {"device_id": "dev-a3", "confirm": "yes"}).status_code == 302
    assert _devices("p-adt") == []
    assert Assignment.objects.filter(patient__pseudonym="p-adt", end__isnull=True).count() == 0


@pytest.mark.django_db
def test_a_device_measuring_someone_else_is_refused_with_a_message(wards: dict[str, Any]) -> None:
    from telemetry.stays import patient_admit

    patient_admit(pseudonym="p-one", ward_code="icu-a", device_id="dev-a1")
    patient_admit(pseudonym="p-two", ward_code="icu-a")
    nurse = wards["nurse"].client()
    r = nurse.post("/ward/flow/patients/p-two/associate", {"device_id": "dev-a1", "confirm": "yes"})
    assert r.status_code == 302
    assert _devices("p-one") == ["dev-a1"] and _devices("p-two") == []
    denied = _last("device.associated")
    assert (denied.outcome, denied.subject, denied.detail["reason"]) == ("denied", "p-two", "device_in_use")
    assert "dev-a1 is assigned to another patient" in _messages(nurse)
    r = nurse.post("/ward/flow/patients/p-two/associate", {"device_id": "no-such", "confirm": "yes"})
    assert _last("device.associated").detail["reason"] == "unknown_device"


@pytest.mark.django_db
def test_transfer_and_discharge_through_the_pages(wards: dict[str, Any]) -> None:
    from telemetry.stays import patient_admit

    patient = patient_admit(pseudonym="p-move", ward_code="icu-a", device_id="dev-a1", bed="1")
    now = dt.datetime.now(dt.UTC)
    alarm = alarm_raise(
        patient=patient, rule=rule_current_ward(wards["a"]), kind=Kind.LOW, onset=now, now=now, explain={}
    )
    nurse = wards["nurse"].client()
    preview = nurse.post("/ward/flow/patients/p-move/discharge", {})
    assert "Discharge p-move?" in preview.content.decode() and "icu-a, bed 1" in preview.content.decode()
    assert Patient.objects.get(pseudonym="p-move").discharged_at is None
    r = nurse.post("/ward/flow/patients/p-move/transfer", {"ward_code": "icu-b", "bed": "8", "confirm": "yes"})
    assert r.status_code == 302
    moved = Patient.objects.get(pseudonym="p-move")
    assert (moved.ward.code, moved.bed) == ("icu-b", "8")
    # The icu-a nurse still opens the chart: the history of the stay, without a live feed.
    chart = nurse.get("/patients/p-move/")
    assert chart.status_code == 200 and '"historyReason": "former_ward"' in chart.content.decode()
    assert _last("chart.view").detail["reason"] == "former_ward"
    # Now the patient is icu-b's: the icu-a nurse may no longer discharge it; icu-b's clinician may.
    refused = nurse.post("/ward/flow/patients/p-move/discharge", {"confirm": "yes"})
    assert refused.status_code == 403
    denied = _last("patient.discharged")
    assert (denied.outcome, denied.detail["reason"]) == ("denied", "other_ward")
    other = wards["other"].client()
    assert other.post("/ward/flow/patients/p-move/discharge", {"confirm": "yes"}).status_code == 302
    assert Patient.objects.get(pseudonym="p-move").discharged_at is not None
    assert Alarm.objects.get(pk=alarm.pk).state == State.RESOLVED
    after = other.get(FLOW).content.decode()
    assert "p-move discharged." in after and 'data-pseudonym="p-move"' not in after


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["compliance", "device_admin", "admin"])
def test_other_roles_are_refused_the_workflow(wards: dict[str, Any], role: str) -> None:
    from telemetry.stays import patient_admit

    patient_admit(pseudonym="p-x", ward_code="icu-a")
    who: Persona = persona(role)
    client = who.client()
    assert client.get(FLOW).status_code == 403
    assert client.post("/ward/flow/patients/p-x/discharge", {"confirm": "yes"}).status_code == 403
    assert Patient.objects.get(pseudonym="p-x").discharged_at is None
    assert _last("ward.flow").detail["reason"] == f"role_{role}"


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("ingest_clients")
async def test_an_admission_in_the_page_reaches_every_open_overview(wards: Any) -> None:
    data = await sync_to_async(lambda: wards)()
    headers = await sync_to_async(data["clinician"].ws_headers)()
    overview = WebsocketCommunicator(application, "/ws/ward/live", headers=headers)
    assert (await overview.connect())[0]
    first = orjson.loads(await overview.receive_from(timeout=5))
    assert first["type"] == "ward.snapshot" and first["patients"] == []
    nurse = await sync_to_async(data["nurse"].client)()
    form = {"ward_code": "icu-a", "bed": "5", "device_id": "dev-a1", "confirm": "yes"}
    assert (await sync_to_async(nurse.post)("/ward/flow/admit", form)).status_code == 302
    seen: list[dict[str, Any]] = []
    while not any(f["type"] == "resync" for f in seen):
        text = await overview.receive_from(timeout=5)
        schemas.frame_decoder.decode(text)
        message = orjson.loads(text)
        seen.extend(message["frames"] if message["type"] == "frames" else [message])
    flows = [(f["event"], f["bed"]) for f in seen if f["type"] == "patient.flow"]
    assert flows[0] == ("admitted", "5")
    listing = await sync_to_async(data["clinician"].client)()
    cards = (await sync_to_async(listing.get)("/api/v1/patients/")).json()["patients"]
    assert [(c["bed"], c["devices"]) for c in cards] == [("5", ["dev-a1"])]
    await overview.disconnect()
