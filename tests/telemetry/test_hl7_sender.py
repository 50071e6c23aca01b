"""ORU results out, the sending half, over real TCP against the EHR stand-in (tests/hl7_peer.py):
done only on AA, AE / timeouts / dropped connections retried under the same MSH-10, AR to the
dead-letter list with its technical alarm, in order per patient, a stopped receiver delays but
loses nothing, and two senders never send a message twice."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from alerts.integration import IntegrationAlarmProcessor
from alerts.models import Alarm
from alerts.vocabulary import Kind
from audit.models import AuditEvent
from audit.selectors import patient_disclosures
from telemetry.hl7.oru import oru_validate
from telemetry.hl7.outbox import AckOutcome, OruProcessor, oru_claim, oru_record
from telemetry.hl7.receiver import ack_for
from telemetry.hl7.sender import OruSender, ack_read, client_tls
from telemetry.models import Device, OruMessage, Patient, PatientIdentity
from telemetry.selectors import ReadingRow
from tests import factories
from tests.hl7.support import valid_ack
from tests.hl7.test_listener_robustness import _certificate
from tests.hl7_peer import EhrPeer, ehr_peer
from tests.notify_servers import free_port

ROOT = Path(__file__).resolve().parents[2]
T0 = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)
MRN = "MRN-88120"


@pytest.fixture
def peer(settings: Any) -> Iterator[EhrPeer]:
    with ehr_peer() as running:
        settings.PERFUSE_HL7_ORU_TARGET = f"127.0.0.1:{running.port}"
        settings.PERFUSE_HL7_ORU_RETRY_BASE_SECONDS = 0.05
        settings.PERFUSE_HL7_ORU_RETRY_MAX_SECONDS = 0.2
        yield running
        for text in set(running.received):  # every message the sender emitted, against v2.6 ORU_R01
            oru_validate(text)


@pytest.fixture
def patients() -> list[Patient]:
    factories.ward("icu-ehr")
    for n in range(1, 4):
        factories.device(ward_code="icu-ehr", device_id=f"lumee-ehr-{n}", patient=f"pt-ehr-{n}")
    found = list(Patient.objects.filter(pseudonym__startswith="pt-ehr-").order_by("pseudonym"))
    PatientIdentity.objects.create(patient=found[0], mrn=MRN)
    return found


def _enqueue(patient: Patient, intervals: int, first: int = 0) -> list[str]:
    """One outbox message per interval for the patient, through the engine processor."""
    device = Device.objects.get(assignments__patient=patient)
    processor = OruProcessor()
    rows = [
        ReadingRow(device.pk, patient.pk, "spo2", i, T0 + dt.timedelta(minutes=i, seconds=5), 96.0, 0.9, None, None)
        for i in range(first, first + intervals)
    ]
    processor.process(rows, now=T0)
    processor.tick(now=T0 + dt.timedelta(minutes=first + intervals + 1))
    return list(OruMessage.objects.filter(patient=patient).order_by("id").values_list("control_id", flat=True)[first:])


@contextmanager
def running_sender(port: int, **options: Any) -> Iterator[OruSender]:
    """An OruSender running in a thread of its own (its own event loop) until the block ends."""
    options.setdefault("poll", 0.05)
    sender = OruSender("127.0.0.1", port, **options)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(target=loop.run_until_complete, args=(sender.run(stop),), name="oru-sender")
    thread.start()
    try:
        yield sender
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()
    assert not thread.is_alive()


def _states(control_ids: list[str]) -> list[str]:
    by_id = dict(OruMessage.objects.filter(control_id__in=control_ids).values_list("control_id", "state"))
    return [by_id[c] for c in control_ids]


def _all_done(control_ids: list[str]) -> Any:
    return lambda _peer: set(_states(control_ids)) == {"done"}


pytestmark = pytest.mark.django_db(transaction=True)


def test_aa_is_done_and_the_ehr_got_a_valid_v2_6_message_with_the_mrn(peer: EhrPeer, patients: list[Patient]) -> None:
    [control_id] = _enqueue(patients[0], 1)
    with running_sender(peer.port):
        assert peer.wait(_all_done([control_id]))
    [text] = peer.received
    message = oru_validate(text)
    assert message.msh.msh_10.to_er7() == control_id
    assert message.oru_r01_patient_result.oru_r01_patient.pid.pid_3[0].to_er7() == f"{MRN}^^^^MR"
    row = OruMessage.objects.get(control_id=control_id)
    assert (row.attempts, row.ack_code, row.message) == (1, "AA", text)
    sent = AuditEvent.objects.get(action="hl7.oru_sent")
    assert sent.subject == "pt-ehr-1" and sent.detail["control_id"] == control_id
    [disclosure] = patient_disclosures(pseudonym="pt-ehr-1", start=None, end=None)
    assert disclosure["recipient"] == "hl7-oru (system)" and "EHR" in disclosure["description"]


def test_ae_is_retried_under_the_same_msh_10_and_the_next_message_waits_for_it(
    peer: EhrPeer, patients: list[Patient]
) -> None:
    first, second = _enqueue(patients[0], 2)
    peer.then("AE", "AE")
    with running_sender(peer.port):
        assert peer.wait(_all_done([first, second]))
    assert peer.control_ids() == [first, first, first, second]
    assert len(set(peer.received[:3])) == 1  # the same bytes every time
    row = OruMessage.objects.get(control_id=first)
    assert (row.attempts, row.state, row.ack_code) == (3, "done", "AA")


@pytest.mark.parametrize("behaviour", ["stall", "drop"])
def test_a_stalled_or_dropped_connection_is_retried_under_the_same_msh_10(
    peer: EhrPeer, patients: list[Patient], behaviour: str
) -> None:
    [control_id] = _enqueue(patients[1], 1)
    peer.then(behaviour)
    with running_sender(peer.port, ack_timeout=0.5):
        assert peer.wait(_all_done([control_id]))
    assert peer.control_ids() == [control_id, control_id]
    row = OruMessage.objects.get(control_id=control_id)
    assert row.attempts == 2 and row.state == "done"


def test_ar_dead_letters_the_message_raises_the_technical_alarm_and_a_later_aa_clears_it(
    peer: EhrPeer, patients: list[Patient]
) -> None:
    rejected, following = _enqueue(patients[0], 2)
    peer.then("AR")
    with running_sender(peer.port):
        assert peer.wait(lambda _p: _states([rejected, following]) == ["dead", "done"])
    assert peer.control_ids() == [rejected, following]  # a dead letter does not hold the next one
    dead = OruMessage.objects.get(control_id=rejected)
    assert dead.ack_code == "AR" and "stand-in answers AR" in dead.last_error
    assert AuditEvent.objects.filter(action="hl7.oru_rejected", detail__control_id=rejected).count() == 1
    alarms = IntegrationAlarmProcessor()
    now = dt.datetime.now(dt.UTC)
    OruMessage.objects.filter(control_id=following).update(state="queued")  # not accepted yet
    alarms.tick(now=now)
    [alarm] = Alarm.objects.filter(kind=Kind.HL7_REJECTED)
    assert (alarm.patient_id, alarm.category, alarm.priority) == (patients[0].pk, "technical", "low")
    assert alarm.explain["control_ids"] == [rejected] and alarm.condition_present
    alarms.tick(now=now + dt.timedelta(seconds=2))  # nothing new: no second alarm
    assert Alarm.objects.filter(kind=Kind.HL7_REJECTED).count() == 1
    OruMessage.objects.filter(control_id=following).update(state="done")
    alarms.tick(now=now + dt.timedelta(seconds=4))
    alarm.refresh_from_db()
    assert not alarm.condition_present  # the feed works again for the patient
    assert OruMessage.objects.get(control_id=rejected).state == "dead"  # still listed for the team


def test_a_stopped_receiver_delays_and_loses_nothing_then_gets_each_patients_messages_in_order(
    peer: EhrPeer, patients: list[Patient]
) -> None:
    peer.stop()
    expected = {p.pseudonym: _enqueue(p, 3) for p in patients}
    with running_sender(peer.port):
        every = [c for ids in expected.values() for c in ids]
        assert _wait_db(lambda: OruMessage.objects.filter(control_id__in=every, attempts__gte=2).count() >= 3)
        assert peer.received == [] and "done" not in _states(every)
        peer.start()
        assert peer.wait(_all_done(every))
    arrived = peer.control_ids()
    assert sorted(arrived) == sorted(every)  # nothing was lost, and (no NAKs) nothing sent twice
    for ids in expected.values():
        assert [c for c in arrived if c in ids] == ids


def test_two_senders_never_send_the_same_message_twice_and_keep_each_patients_order(
    peer: EhrPeer, patients: list[Patient]
) -> None:
    expected = {p.pseudonym: _enqueue(p, 6) for p in patients}
    every = [c for ids in expected.values() for c in ids]
    with running_sender(peer.port, batch=2), running_sender(peer.port, batch=2):
        assert peer.wait(_all_done(every))
    arrived = peer.control_ids()
    assert sorted(arrived) == sorted(every) and len(arrived) == len(every)
    for ids in expected.values():
        assert [c for c in arrived if c in ids] == ids


def test_a_claim_is_exclusive_until_its_lease_ends_and_a_lost_claim_records_nothing(
    patients: list[Patient], settings: Any
) -> None:
    settings.PERFUSE_HL7_ORU_TARGET = "127.0.0.1:9"
    first, _second = _enqueue(patients[0], 2)
    now = dt.datetime.now(dt.UTC)
    lease = dt.timedelta(seconds=30)
    [claim] = oru_claim(now=now, limit=10, lease=lease)
    assert claim.control_id == first  # the patient's second message waits for the first
    assert oru_claim(now=now, limit=10, lease=lease) == []
    [again] = oru_claim(now=now + dt.timedelta(seconds=31), limit=10, lease=lease)
    assert (again.control_id, again.attempt) == (first, 2)
    assert oru_record(claim=claim, outcome=AckOutcome("AA"), now=now) is None  # the old claim is stale
    assert oru_record(claim=again, outcome=AckOutcome("AA"), now=now) == "done"


def test_ack_reading() -> None:
    message = b"MSH|^~\\&|PERFUSE||EHR||20260302120000+0000||ORU^R01^ORU_R01|PFU1|P|2.6\rPID|||x"
    assert ack_read(ack_for(message, "AA"), control_id="PFU1") == AckOutcome("AA")
    for code in ("AA", "AE", "AR"):  # the stand-in's ACKs are valid v2.6 ACKs
        valid_ack(ack_for(message, code, text="why").decode())
    nak = ack_read(ack_for(message, "AE", text="unknown patient"), control_id="PFU1")
    assert nak.code == "AE" and "unknown patient" in nak.error
    commit = ack_for(message, "AA").replace(b"MSA|AA|", b"MSA|CA|")
    assert ack_read(commit, control_id="PFU1").code == "AA"
    assert ack_read(ack_for(message, "AA"), control_id="PFU2").code == ""  # another message's ACK
    assert ack_read(b"garbage", control_id="PFU1").code == ""
    assert ack_read(b"MSH|^~\\&|X\rMSA|ZZ|PFU1", control_id="PFU1").code == ""


def _wait_db(predicate: Any, timeout: float = 30.0) -> bool:
    deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=timeout)
    while dt.datetime.now(dt.UTC) < deadline:
        if predicate():
            return True
        threading.Event().wait(0.1)
    return False


def test_run_hl7_sends_the_outbox_beside_the_listener_and_stops_on_sigterm(
    peer: EhrPeer, patients: list[Patient]
) -> None:
    expected = _enqueue(patients[0], 2)
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "PERFUSE_HL7_LISTEN": f"127.0.0.1:{free_port()}",
        "PERFUSE_HL7_ORU_TARGET": f"127.0.0.1:{peer.port}",
    }
    proc = subprocess.Popen([sys.executable, "manage.py", "run_hl7"], cwd=ROOT, env=env, stderr=subprocess.PIPE)
    try:
        assert peer.wait(_all_done(expected)), "run_hl7 did not send the outbox"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, errors = proc.communicate(timeout=30)
    assert proc.returncode == 0, errors.decode()
    assert peer.control_ids() == expected
    assert b"ORU sender to" in errors and b"HL7 listener on" in errors


def test_the_dead_letter_list_and_a_requeue_under_a_new_msh_10(peer: EhrPeer, patients: list[Patient]) -> None:
    [rejected] = _enqueue(patients[0], 1)
    peer.then("AR")
    with running_sender(peer.port):
        assert peer.wait(lambda _p: _states([rejected]) == ["dead"])
    out = StringIO()
    call_command("hl7_dead_letters", "--json", stdout=out)
    [letter] = json.loads(out.getvalue())["dead_letters"]
    assert (letter["control_id"], letter["pseudonym"]) == (rejected, "pt-ehr-1")
    out = StringIO()
    call_command("hl7_dead_letters", "--requeue", str(letter["id"]), "--json", stdout=out)
    again = json.loads(out.getvalue())["requeued"][str(letter["id"])]
    assert again != rejected
    with running_sender(peer.port):
        assert peer.wait(_all_done([again]))
    assert peer.control_ids() == [rejected, again]
    assert _states([rejected]) == ["requeued"]
    assert AuditEvent.objects.filter(action="hl7.oru_requeued", detail__requeued_as=again).count() == 1
    out = StringIO()
    call_command("hl7_dead_letters", stdout=out)
    assert "no dead letters" in out.getvalue()
    with pytest.raises(CommandError, match="no dead letter"):
        call_command("hl7_dead_letters", "--requeue", str(letter["id"]))


def test_results_go_over_tls_to_a_receiver_whose_ca_is_configured_and_not_to_another(
    patients: list[Patient], settings: Any, tmp_path: Path
) -> None:
    cert, key = _certificate(tmp_path)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    settings.PERFUSE_HL7_ORU_RETRY_BASE_SECONDS = settings.PERFUSE_HL7_ORU_RETRY_MAX_SECONDS = 0.05
    with ehr_peer(tls=server) as peer:
        settings.PERFUSE_HL7_ORU_TARGET = f"127.0.0.1:{peer.port}"
        [control_id] = _enqueue(patients[0], 1)
        (tmp_path / "other").mkdir()
        settings.PERFUSE_HL7_ORU_TLS_CA = str(_certificate(tmp_path / "other")[0])  # not the peer's CA
        with running_sender(peer.port, tls=client_tls()):
            assert _wait_db(lambda: OruMessage.objects.get(control_id=control_id).attempts >= 2)
        row = OruMessage.objects.get(control_id=control_id)
        assert row.state == "retry" and "SSL" in row.last_error and peer.received == []
        settings.PERFUSE_HL7_ORU_TLS_CA = str(cert)
        with running_sender(peer.port, tls=client_tls()):
            assert peer.wait(_all_done([control_id]))
    assert peer.control_ids() == [control_id]
