"""ADT over MLLP against the real listener on real TCP: every event in every version, every ACK
code with its ERR segment, MSH-10 idempotency, the raw message store and the audit trail. Every
message sent and every ACK received is validated with hl7apy against its version's structure."""

from __future__ import annotations

import threading

import pytest
from django.contrib.auth.models import User
from django.db import connection

from audit.models import AuditEvent
from telemetry.hl7.adt import VERSIONS
from telemetry.hl7.models import Hl7Message
from telemetry.models import Patient, PatientIdentity, PatientStay, Ward
from tests import personas
from tests.hl7.support import RunningListener, adt, valid_adt


@pytest.fixture
def wards(transactional_db: None) -> tuple[Ward, Ward]:
    return (
        Ward.objects.create(code="icu-a", name="ICU A"),
        Ward.objects.create(code="icu-b", name="ICU B"),
    )


def _send(hl7: RunningListener, message: str) -> tuple[str, str, str]:
    ack = hl7.send(valid_adt(message))
    return ack.code, ack.err_location, ack.err_code


def _patient(mrn: str) -> Patient:
    return PatientIdentity.objects.select_related("patient__ward").get(mrn=mrn).patient


@pytest.mark.parametrize("version", VERSIONS)
def test_every_event_in_every_version_is_applied(hl7: RunningListener, wards: tuple[Ward, Ward], version: str) -> None:
    mrn = "MRN-" + version.replace(".", "")
    admit = adt(
        "A01",
        version=version,
        pid3=f"999^^^X^PI~{mrn}^^^HOSP^MR",  # the MRN is the repetition of type MR, wherever it is
        ward="icu-a",
        room="12",
        bed="B",
        name="Doe^Jane^Q",
        birth="19800101",
    )
    ack = hl7.send(valid_adt(admit))
    assert (ack.code, ack.control_id) == ("AA", admit.split("\r")[0].split("|")[9])
    patient = _patient(mrn)
    assert (patient.ward.code, patient.bed, patient.discharged_at) == ("icu-a", "12-B", None)
    identity = patient.identity
    assert (identity.name, identity.date_of_birth.isoformat()) == ("Doe, Jane Q", "1980-01-01")  # type: ignore[union-attr]

    assert _send(hl7, adt("A08", version=version, mrn=mrn, name="Roe^Jane", birth="19800102"))[0] == "AA"
    identity.refresh_from_db()
    assert (identity.name, str(identity.date_of_birth)) == ("Roe, Jane", "1980-01-02")

    assert _send(hl7, adt("A02", version=version, mrn=mrn, ward="icu-b", bed="7"))[0] == "AA"
    patient.refresh_from_db()
    assert (patient.ward.code, patient.bed) == ("icu-b", "7")
    assert [s.ward.code for s in PatientStay.objects.filter(patient=patient).order_by("start", "id")] == [
        "icu-a",
        "icu-b",
    ]

    assert _send(hl7, adt("A03", version=version, mrn=mrn, ward="icu-b"))[0] == "AA"
    patient.refresh_from_db()
    assert patient.discharged_at is not None

    assert _send(hl7, adt("A13", version=version, mrn=mrn, ward="icu-b"))[0] == "AA"
    patient.refresh_from_db()
    assert patient.discharged_at is None

    assert _send(hl7, adt("A11", version=version, mrn=mrn, ward="icu-b"))[0] == "AA"
    patient.refresh_from_db()
    assert patient.discharged_at is not None

    assert _send(hl7, adt("A04", version=version, mrn=mrn, ward="icu-a", bed="1"))[0] == "AA"
    patient.refresh_from_db()
    assert (patient.ward.code, patient.bed, patient.discharged_at) == ("icu-a", "1", None)
    assert Patient.objects.count() == 1  # the MRN kept its pseudonym through all of it
    stored = list(Hl7Message.objects.order_by("id").values_list("message_type", "version", "ack_code"))
    events = ["A01", "A08", "A02", "A03", "A13", "A11", "A04"]
    assert stored == [(f"ADT^{event}", version, "AA") for event in events]


def test_a_new_mrn_gets_a_random_pseudonym_and_identity_only_in_the_identity_map(
    hl7: RunningListener, wards: tuple[Ward, Ward]
) -> None:
    assert _send(hl7, adt("A01", mrn="12345", name="Doe^Jane"))[0] == "AA"
    assert _send(hl7, adt("A01", mrn="12346", name="Doe^John"))[0] == "AA"
    first, second = _patient("12345"), _patient("12346")
    assert first.pseudonym != second.pseudonym
    for patient in (first, second):
        assert patient.pseudonym.startswith("p-") and len(patient.pseudonym) == 12
        assert "1234" not in patient.pseudonym
    admitted = AuditEvent.objects.filter(action="patient.admitted", subject=first.pseudonym).get()
    assert "12345" not in str(admitted.detail) and "Doe" not in str(admitted.detail)
    received = AuditEvent.objects.filter(action="hl7.message_received", subject=first.pseudonym).get()
    assert received.detail["ack"] == "AA" and received.actor_username == "hl7-adt"
    assert "12345" not in str(received.detail) and "Doe" not in str(received.detail)


@pytest.mark.parametrize(("version", "location"), [("2.3", "PV1^1^3"), ("2.5", "PV1^1^3"), ("2.8", "PV1^1^3")])
def test_an_unknown_ward_is_ae_naming_pv1_3_and_changes_nothing(
    hl7: RunningListener, wards: tuple[Ward, Ward], version: str, location: str
) -> None:
    message = adt("A01", version=version, ward="no-such-ward")
    ack = hl7.send(valid_adt(message))
    assert (ack.code, ack.err_location, ack.err_code) == ("AE", location, "204")
    assert not Patient.objects.exists() and not PatientIdentity.objects.exists()
    stored = Hl7Message.objects.get()
    assert (stored.ack_code, stored.ack, bytes(stored.raw)) == ("AE", ack.text, message.encode())
    assert "no-such-ward" in stored.error
    assert AuditEvent.objects.filter(action="hl7.message_received", outcome="denied").count() == 1


@pytest.mark.parametrize("event", ["A02", "A03", "A08", "A11", "A13"])
def test_an_event_for_an_unknown_patient_is_ae_naming_pid_3(
    hl7: RunningListener, wards: tuple[Ward, Ward], event: str
) -> None:
    assert _send(hl7, adt(event, mrn="99999")) == ("AE", "PID^1^3", "204")
    assert not Patient.objects.exists()


def test_content_errors_name_their_field(hl7: RunningListener, wards: tuple[Ward, Ward]) -> None:
    no_mrn = adt("A01", pid3="555^^^HOSP^PI")
    assert _send(hl7, no_mrn) == ("AE", "PID^1^3", "101")
    no_ward = adt("A01", ward="", room="", bed="")
    assert _send(hl7, no_ward) == ("AE", "PV1^1^3", "101")
    bad_birth = hl7.send_unchecked(adt("A01", birth="19801340").encode())  # not valid HL7: no hl7apy check
    assert (bad_birth.code, bad_birth.err_location, bad_birth.err_code) == ("AE", "PID^1^7", "102")
    # A discharge of a patient who is not admitted (already discharged).
    assert _send(hl7, adt("A01", mrn="777"))[0] == "AA"
    assert _send(hl7, adt("A03", mrn="777"))[0] == "AA"
    again = hl7.send(valid_adt(adt("A03", mrn="777")))
    assert (again.code, again.err_location, again.err_code) == ("AE", "PID^1^3", "204")
    assert _patient("777").pseudonym not in again.text  # the pseudonym never leaves Perfuse
    assert "not admitted" in again.text
    assert Patient.objects.count() == 1


def test_a_missing_required_segment_is_ae(hl7: RunningListener, wards: tuple[Ward, Ward]) -> None:
    without_pv1 = "\r".join(adt("A01").split("\r")[:3])
    ack = hl7.send_unchecked(without_pv1.encode())
    assert (ack.code, ack.err_code) == ("AE", "100")
    assert "PV1" in ack.segment("ERR")[8]
    assert not Patient.objects.exists()


@pytest.mark.parametrize(
    ("message", "location", "code"),
    [
        (adt("A05"), "MSH^1^9", "201"),
        (adt("A01").replace("ADT^A01^ADT_A01", "ORU^R01^ORU_R01"), "MSH^1^9", "200"),
        (adt("A01", version="2.2"), "MSH^1^12", "203"),
        (adt("A01").replace("|P|2.5", "|P|2.9"), "MSH^1^12", "203"),
        (adt("A01", processing="T"), "MSH^1^11", "202"),
        (adt("A01", processing="D"), "MSH^1^11", "202"),
    ],
)
def test_what_is_not_accepted_is_ar(
    hl7: RunningListener, wards: tuple[Ward, Ward], message: str, location: str, code: str
) -> None:
    ack = hl7.send_unchecked(message.encode())
    assert (ack.code, ack.err_location, ack.err_code) == ("AR", location, code)
    assert ack.control_id == message.split("\r")[0].split("|")[9]
    assert not Patient.objects.exists()
    assert Hl7Message.objects.get().ack_code == "AR"


def test_the_processing_id_is_configurable(
    hl7: RunningListener, wards: tuple[Ward, Ward], settings: pytest.FixtureRequest
) -> None:
    settings.PERFUSE_HL7_PROCESSING_ID = "T"  # type: ignore[attr-defined]
    assert _send(hl7, adt("A01", processing="T"))[0] == "AA"
    assert _send(hl7, adt("A01", processing="P", mrn="2"))[:2] == ("AR", "MSH^1^11")


@pytest.mark.parametrize(
    ("payload", "location"),
    [
        (b"hello, this is not HL7", ""),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", ""),
        (adt("A01").replace("^~\\&", "^~&", 1).encode(), "MSH^1^2"),  # three encoding characters
        (adt("A01").replace("^~\\&", "^^\\&", 1).encode(), "MSH^1^2"),  # a repeated one
        (adt("A01").replace("^~\\&", "abcd", 1).encode(), "MSH^1^2"),  # letters
        (adt("A01").replace("MSH|", "MSHa", 1).encode(), "MSH^1^1"),  # a letter as field separator
    ],
)
def test_not_hl7_and_wrong_encoding_characters_are_ar(
    hl7: RunningListener, wards: tuple[Ward, Ward], payload: bytes, location: str
) -> None:
    ack = hl7.send_unchecked(payload)
    assert (ack.code, ack.err_location) == ("AR", location)
    assert not Patient.objects.exists()
    stored = Hl7Message.objects.get()
    assert (bytes(stored.raw), stored.ack_code) == (payload, "AR")


def test_a_repeated_msh10_gets_the_same_ack_and_no_second_effect(
    hl7: RunningListener, wards: tuple[Ward, Ward]
) -> None:
    message = adt("A01", control_id="REPEAT-1", mrn="12345")
    first = hl7.send(valid_adt(message))
    again = hl7.send(valid_adt(message))
    assert first.code == "AA" and again.text == first.text  # the stored ACK, byte for byte
    discharge = adt("A03", control_id="REPEAT-2", mrn="12345")
    assert hl7.send(discharge).code == "AA"
    assert hl7.send(message).text == first.text  # the admission is not applied again
    patient = _patient("12345")
    assert patient.discharged_at is not None
    assert Patient.objects.count() == 1 and PatientStay.objects.count() == 1
    assert AuditEvent.objects.filter(action="patient.admitted").count() == 1
    assert Hl7Message.objects.filter(control_id="REPEAT-1").count() == 1


def test_a_repeated_msh10_of_an_ae_gets_the_same_ae_even_once_the_ward_exists(
    hl7: RunningListener, wards: tuple[Ward, Ward]
) -> None:
    message = adt("A01", control_id="LATE-WARD", ward="icu-new")
    first = hl7.send(message)
    assert first.code == "AE"
    Ward.objects.create(code="icu-new", name="New")
    assert hl7.send(message).text == first.text
    assert not Patient.objects.exists()


def test_the_message_store_is_insert_and_select_only_for_the_application(
    hl7: RunningListener, wards: tuple[Ward, Ward]
) -> None:
    assert hl7.send(adt("A01")).code == "AA"
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT has_table_privilege('telemetry_hl7message', 'INSERT'), "
            "has_table_privilege('telemetry_hl7message', 'SELECT'), "
            "has_table_privilege('telemetry_hl7message', 'UPDATE'), "
            "has_table_privilege('telemetry_hl7message', 'DELETE'), "
            "has_table_privilege('telemetry_hl7message', 'TRUNCATE')"
        )
        assert cursor.fetchone() == (True, True, False, False, False)


def test_an_empty_msh10_is_ar(hl7: RunningListener, wards: tuple[Ward, Ward]) -> None:
    message = adt("A01", control_id="X").replace("|X|P|", "||P|")
    ack = hl7.send_unchecked(message.encode())
    assert (ack.code, ack.control_id, ack.err_location, ack.err_code) == ("AR", "UNKNOWN", "MSH^1^10", "101")
    assert not Patient.objects.exists()


def test_two_admissions_of_one_new_mrn_at_once_make_one_patient(hl7: RunningListener, wards: tuple[Ward, Ward]) -> None:
    messages = [valid_adt(adt("A01", mrn="RACE-1", bed=f"bed-{n}")) for n in range(4)]
    codes: list[str] = []
    barrier = threading.Barrier(len(messages))

    def send(message: str) -> None:
        barrier.wait()
        codes.append(hl7.send(message).code)

    threads = [threading.Thread(target=send, args=(message,)) for message in messages]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert codes == ["AA"] * 4
    assert Patient.objects.count() == 1 and PatientIdentity.objects.filter(mrn="RACE-1").count() == 1


def test_an_adt_admission_shows_on_the_ward_overview_and_a_discharge_removes_it(
    hl7: RunningListener, wards: tuple[Ward, Ward], ward_clinician: User
) -> None:
    assert hl7.send(valid_adt(adt("A01", mrn="12345", ward="icu-a", bed="bed-1"))).code == "AA"
    pseudonym = _patient("12345").pseudonym
    client = personas.verified_client(ward_clinician)
    page = client.get("/")
    assert page.status_code == 200 and pseudonym in page.content.decode()
    assert "12345" not in page.content.decode() and "Doe" not in page.content.decode()
    assert hl7.send(valid_adt(adt("A03", mrn="12345", ward="icu-a"))).code == "AA"
    assert pseudonym not in client.get("/").content.decode()
