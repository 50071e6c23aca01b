"""The listener against malformed input, dropped connections and failures mid-transaction, over
real TCP: AR or a closed connection, never a crashed listener and never a partial change."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.db import IntegrityError

from telemetry import stays
from telemetry.checks import hl7_tls_check
from telemetry.hl7 import services
from telemetry.hl7.listener import tls_context
from telemetry.hl7.mllp import frame, mllp_send
from telemetry.hl7.models import Hl7Message
from telemetry.models import Patient, PatientIdentity, Ward
from tests.hl7.support import Ack, RunningListener, adt, listener_running, read_frame, valid_ack, valid_adt


@pytest.fixture
def ward(transactional_db: None) -> Ward:
    return Ward.objects.create(code="icu-a", name="ICU A")


def _still_serving(hl7: RunningListener, mrn: str = "55555") -> None:
    """The listener answers a new connection (it survived what came before)."""
    assert hl7.send(valid_adt(adt("A01", mrn=mrn))).code == "AA"


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_noise_before_a_start_block_is_skipped(hl7: RunningListener, ward: Ward) -> None:
    message = valid_adt(adt("A01"))
    with hl7.raw_socket() as sock:
        sock.sendall(b"\r\n\x00garbage\r\n" + frame(message.encode()) + b"\n" + frame(valid_adt(adt("A08")).encode()))
        first, second = Ack(valid_ack(read_frame(sock).decode())), Ack(valid_ack(read_frame(sock).decode()))
    assert (first.code, second.code) == ("AA", "AA")


def test_a_half_message_then_a_dropped_connection_changes_nothing(hl7: RunningListener, ward: Ward) -> None:
    message = frame(valid_adt(adt("A01", mrn="12345")).encode())
    with hl7.raw_socket() as sock:
        sock.sendall(message[: len(message) // 2])
    _still_serving(hl7)
    assert not PatientIdentity.objects.filter(mrn="12345").exists()
    assert Hl7Message.objects.count() == 1  # only the later, whole message


def test_a_message_without_its_trailer_then_a_close_changes_nothing(hl7: RunningListener, ward: Ward) -> None:
    with hl7.raw_socket() as sock:
        sock.sendall(frame(adt("A01", mrn="12345").encode())[:-2])
        sock.shutdown(socket.SHUT_WR)
        assert _closed(sock)
    assert not Patient.objects.exists() and not Hl7Message.objects.exists()


def test_a_start_block_inside_a_message_closes_the_connection(hl7: RunningListener, ward: Ward) -> None:
    with hl7.raw_socket() as sock:
        sock.sendall(b"\x0b" + adt("A01").encode()[:40] + frame(adt("A01", mrn="2").encode()))
        assert _closed(sock)
    assert not Patient.objects.exists() and not Hl7Message.objects.exists()
    _still_serving(hl7)


def test_an_end_block_without_carriage_return_closes_the_connection(hl7: RunningListener, ward: Ward) -> None:
    with hl7.raw_socket() as sock:
        sock.sendall(b"\x0b" + adt("A01").encode() + b"\x1cX")
        assert _closed(sock)
    assert not Patient.objects.exists()
    _still_serving(hl7)


def test_a_10_mib_message_is_refused_and_the_listener_goes_on(hl7: RunningListener, ward: Ward) -> None:
    header = adt("A01", control_id="HUGE-1", mrn="12345")
    huge = frame((header + "\rNTE|1||" + "x" * (10 * 1024 * 1024)).encode())
    sock = hl7.raw_socket()

    def push() -> None:
        with contextlib.suppress(OSError):  # the listener closed before all of it was sent: expected
            sock.sendall(huge)

    sender = threading.Thread(target=push)
    sender.start()
    try:
        reply = read_frame(sock)
    except ConnectionResetError:
        reply = b""
    sender.join(30)
    sock.close()
    if reply:  # the AR arrived before the close (it may not: the peer was still sending)
        ack = Ack(valid_ack(reply.decode()))
        assert (ack.code, ack.control_id, ack.err_code) == ("AR", "HUGE-1", "104")
    assert not PatientIdentity.objects.filter(mrn="12345").exists()
    stored = Hl7Message.objects.get(control_id="HUGE-1")
    assert stored.truncated and stored.ack_code == "AR" and len(bytes(stored.raw)) <= 4096
    _still_serving(hl7)


def test_a_failure_inside_the_transaction_leaves_nothing_and_the_retry_applies_once(
    hl7: RunningListener, ward: Ward, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after the effect, before the commit (here: the audit write fails): no patient, no
    stored message, no ACK; the sender's retry of the same message is applied, once."""
    message = valid_adt(adt("A01", control_id="CRASH-1", mrn="12345"))

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the process died here")

    monkeypatch.setattr(services, "_audit", crash)
    with hl7.raw_socket() as sock:
        sock.sendall(frame(message.encode()))
        assert _closed(sock)  # no ACK: the sender resends
    assert not Patient.objects.exists() and not Hl7Message.objects.exists()
    monkeypatch.undo()
    first = hl7.send(message)
    assert first.code == "AA"
    assert hl7.send(message).text == first.text
    assert Patient.objects.count() == 1


def test_the_same_message_on_two_connections_at_once_is_applied_once(hl7: RunningListener, ward: Ward) -> None:
    message = valid_adt(adt("A01", control_id="TWICE-1", mrn="12345"))
    replies: list[str] = []
    barrier = threading.Barrier(4)

    def send() -> None:
        barrier.wait()
        replies.append(hl7.send(message).text)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(replies) == 4 and len(set(replies)) == 1
    assert Patient.objects.count() == 1 and Hl7Message.objects.count() == 1


def test_an_unknown_character_set_is_ar_and_latin1_is_read(hl7: RunningListener, ward: Ward) -> None:
    unknown = adt("A01").replace("|P|2.5", "|P|2.5||||||EBCDIC")
    ack = hl7.send_unchecked(unknown.encode())
    assert (ack.code, ack.err_location) == ("AR", "MSH^1^18")
    latin = valid_adt(adt("A01", mrn="L1", name="Müller^Jörg").replace("|P|2.5", "|P|2.5||||||8859/1"))
    reply = hl7.send_unchecked(latin.encode("latin-1"))
    assert reply.code == "AA"
    assert PatientIdentity.objects.get(mrn="L1").name == "Müller, Jörg"


@pytest.fixture
def idle_listener(transactional_db: None) -> Iterator[RunningListener]:
    yield from listener_running(idle_seconds=1)


def test_a_stalled_half_message_is_closed_after_the_idle_time(idle_listener: RunningListener, ward: Ward) -> None:
    with idle_listener.raw_socket() as sock:
        sock.sendall(b"\x0bMSH|^~\\&|stalled")
        assert _closed(sock)
    assert not Hl7Message.objects.exists()


def _certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "hl7.crt", directory / "hl7.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_tls_when_a_certificate_and_key_are_configured(
    transactional_db: None, ward: Ward, tmp_path: Path, settings: pytest.FixtureRequest
) -> None:
    cert, key = _certificate(tmp_path)
    settings.PERFUSE_HL7_TLS_CERT, settings.PERFUSE_HL7_TLS_KEY = str(cert), str(key)  # type: ignore[attr-defined]
    server_tls = tls_context()
    assert server_tls is not None
    client_tls = ssl.create_default_context(cafile=str(cert))
    message = valid_adt(adt("A01", mrn="TLS-1"))
    for running in listener_running(tls=server_tls):
        reply = asyncio.run(mllp_send("127.0.0.1", running.port, message.encode(), timeout=30, tls=client_tls))
        assert Ack(valid_ack(reply.decode())).code == "AA"
        with running.raw_socket() as plain:  # a plain-TCP peer gets no HL7 service
            plain.sendall(frame(adt("A01", mrn="PLAIN-1").encode()))
            assert _closed(plain)
    assert PatientIdentity.objects.filter(mrn="TLS-1").exists()
    assert not PatientIdentity.objects.filter(mrn="PLAIN-1").exists()


@pytest.mark.parametrize(
    ("listen", "tls", "errors"),
    [("127.0.0.1:12575", False, 0), ("[::1]:12575", False, 0), ("0.0.0.0:12575", False, 1), ("10.0.0.5:2575", True, 0)],
)
def test_the_deploy_check_wants_tls_off_loopback(
    settings: pytest.FixtureRequest, listen: str, tls: bool, errors: int
) -> None:
    settings.PERFUSE_HL7_LISTEN = listen  # type: ignore[attr-defined]
    settings.PERFUSE_HL7_TLS_CERT = settings.PERFUSE_HL7_TLS_KEY = "x.pem" if tls else ""  # type: ignore[attr-defined]
    assert [e.id for e in hl7_tls_check(None)] == ["telemetry.E101"] * errors


def test_a_database_refusal_of_the_content_is_ae_not_a_message_resent_for_ever(
    hl7: RunningListener, ward: Ward, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(**kwargs: object) -> None:
        Patient.objects.create(pseudonym="half-done", ward=ward, admitted_at=dt.datetime.now(dt.UTC))
        raise IntegrityError("duplicate key value violates unique constraint")

    monkeypatch.setattr(stays, "patient_admit", refuse)
    message = valid_adt(adt("A01", control_id="DB-1"))
    ack = hl7.send(message)
    assert (ack.code, ack.err_code) == ("AE", "207")
    assert not Patient.objects.exists()  # the savepoint took the half-done change back
    assert hl7.send(message).text == ack.text
    assert Hl7Message.objects.get().ack_code == "AE"
