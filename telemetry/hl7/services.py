"""One ADT message in, one ACK out: `hl7_message_handle` is what the listener calls per message.

Each message is one transaction. It takes a lock on (sender, MSH-10) first; if a message with
that key was stored, its stored ACK is the answer and nothing else happens (a repeat, e.g. after
the sender lost our ACK, changes nothing again). Otherwise the event is applied through the
patient-flow services (telemetry/stays.py) inside a savepoint, the raw message is stored with
the ACK that answers it, and one `hl7.message_received` audit event records the outcome, all in
the same commit. So a crash at any point leaves either nothing (the sender's retry is applied
once) or the whole: effect, stored message and ACK (the retry gets that ACK). A service that
refuses (an unknown ward, a discharge of an unknown patient) rolls back its savepoint only: the
message and its AE are still stored.

The ACK goes out only after the commit, so an AA is never sent for something that was not kept.
Unexpected failures (the database is down) raise: the listener closes the connection without an
ACK and the sender resends, which is what interface engines do when no ACK comes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import secrets
from dataclasses import dataclass

from django.conf import settings
from django.db import DataError, IntegrityError, connection, transaction

from audit.trail import Actor, audit_record
from config.refusal import Refusal
from telemetry import selectors, stays
from telemetry.errors import RegistryError
from telemetry.hl7 import ack
from telemetry.hl7.ack import Location, Problem, ack_build
from telemetry.hl7.adt import AdtEvent, Rejected, adt_read, context_of
from telemetry.hl7.er7 import CONTROL_ID_MAX, HeaderError, MessageHeader, header_read, padded
from telemetry.hl7.models import Hl7Message
from telemetry.models import Patient

logger = logging.getLogger(__name__)

ACTION = "hl7.message_received"
# MSH-18 character sets Perfuse reads (HL7 table 0211); without MSH-18, UTF-8, else Latin-1.
CHARSETS = {"ASCII": "ascii", "8859/1": "latin-1", "8859/15": "iso8859-15", "UNICODE UTF-8": "utf-8"}
# RegistryError codes of the flow services → the HL7 error code, the field it concerns, and the
# sentence for the sender when the service's own would name a pseudonym (never sent out).
REGISTRY_ERRORS: dict[str, tuple[str, Location, str]] = {
    "unknown_ward": (ack.UNKNOWN_KEY_IDENTIFIER, Location("PV1", 1, 3), ""),
    "invalid_bed": (ack.DATA_TYPE_ERROR, Location("PV1", 1, 3), ""),
    "unknown_patient": (ack.UNKNOWN_KEY_IDENTIFIER, Location("PID", 1, 3), "no patient with this MRN"),
    "not_admitted": (ack.UNKNOWN_KEY_IDENTIFIER, Location("PID", 1, 3), "the patient with this MRN is not admitted"),
    "not_discharged": (
        ack.UNKNOWN_KEY_IDENTIFIER,
        Location("PID", 1, 3),
        "the patient with this MRN is not discharged",
    ),
    "mrn_in_use": (ack.DUPLICATE_KEY_IDENTIFIER, Location("PID", 1, 3), "the MRN belongs to another patient"),
}
VALUE_TOO_LONG = "104"  # table 0357 from v2.7; the nearest code for a message over the size cap


@dataclass(frozen=True)
class Outcome:
    code: str  # AA, AE, AR
    problem: Problem | None = None
    subject: str = ""  # the pseudonym acted on
    event_time: str = ""  # the sender's EVN-6 (else EVN-2), ISO 8601, for the audit trail


@dataclass(frozen=True)
class Received:
    """A message as it arrived: the bytes, who sent them, and whether they were cut at the cap."""

    raw: bytes
    peer: str = ""
    truncated: bool = False


def _codec(raw: bytes) -> tuple[str, str | None]:
    """(text, None) decoded by MSH-18, or (Latin-1 text, why it cannot be read)."""
    fallback = raw.decode("latin-1")  # every byte is a character: enough to read the header
    try:
        declared = header_read(fallback).components(18)[0].strip()
    except HeaderError:
        declared = ""
    if declared and declared not in CHARSETS:
        return fallback, f"character set {declared!r} (MSH-18) is not supported"
    try:
        return raw.decode(CHARSETS.get(declared, "utf-8")), None
    except UnicodeDecodeError:
        if declared:
            return fallback, f"the message is not valid {declared} (MSH-18)"
        return fallback, None


def _header_or_none(text: str) -> MessageHeader | None:
    try:
        return header_read(text)
    except HeaderError:
        return None


def _key_of(header: MessageHeader | None) -> tuple[str, str]:
    if header is None or len(header.control_id) > CONTROL_ID_MAX:
        return "", ""
    return header.sender[:200], header.control_id


def _lock(key: str) -> None:
    """A transaction-scoped lock on `key`: two copies of one message on two connections (the
    second waits, then finds the first's ACK), or two admissions of one new MRN (the second
    finds the patient the first created, instead of making a second pseudonym)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 7))", [key])


def pseudonym_new() -> str:
    """A fresh pseudonym for a patient first seen by ADT: random, so it says nothing of the MRN."""
    while True:
        candidate = "p-" + secrets.token_hex(5)
        if not Patient.objects.filter(pseudonym=candidate).exists():
            return candidate


def _known(event: AdtEvent) -> str:
    patient = selectors.patient_by_mrn(event.identity.mrn)
    if patient is None:
        raise RegistryError("no patient with this MRN", code="unknown_patient")
    return patient.pseudonym


def _event_apply(event: AdtEvent, actor: Actor) -> str:
    """Apply one ADT event through the patient-flow services; returns the pseudonym acted on.

    Events take effect when Perfuse applies them, not at the sender's event time (kept in the
    audit event): cancellations have no time of their own, and a late or backdated message must
    not land before a change already applied (a readmission before the discharge it follows)."""
    identity = event.identity
    if event.event in {"A01", "A04"}:
        _lock(f"hl7-mrn|{identity.mrn}")
        patient = selectors.patient_by_mrn(identity.mrn)
        pseudonym = patient.pseudonym if patient is not None else pseudonym_new()
        stays.patient_admit(
            pseudonym=pseudonym,
            ward_code=event.ward_code,
            mrn=identity.mrn,
            name=identity.name,
            date_of_birth=identity.date_of_birth,
            bed=event.bed,
            actor=actor,
        )
        return pseudonym
    pseudonym = _known(event)
    if event.event == "A02":
        stays.patient_transfer(pseudonym=pseudonym, ward_code=event.ward_code, bed=event.bed, actor=actor)
    elif event.event == "A03":
        stays.patient_discharge(pseudonym=pseudonym, actor=actor)
    elif event.event == "A08":
        stays.patient_identity_update(
            pseudonym=pseudonym, name=identity.name, date_of_birth=identity.date_of_birth, actor=actor
        )
    elif event.event == "A11":
        stays.patient_admit_cancel(pseudonym=pseudonym, actor=actor)
    else:  # A13: adt.STRUCTURES lists no other event
        stays.patient_discharge_cancel(pseudonym=pseudonym, actor=actor)
    return pseudonym


def _registry_problem(exc: RegistryError) -> Problem:
    if exc.code not in REGISTRY_ERRORS:
        return Problem(code=ack.APPLICATION_INTERNAL_ERROR, text=f"not applied ({exc.code})")
    code, location, text = REGISTRY_ERRORS[exc.code]
    return Problem(code=code, text=text or str(exc), location=location)


def _apply(text: str, actor: Actor) -> Outcome:
    try:
        _, event = adt_read(text, processing_id=settings.PERFUSE_HL7_PROCESSING_ID, zone=settings.PERFUSE_HL7_TIME_ZONE)
    except Rejected as rejected:
        return Outcome(code=rejected.code, problem=rejected.problem)
    event_time = event.occurred_at.isoformat() if event.occurred_at else ""
    try:
        with transaction.atomic():  # a savepoint: a refused event leaves no partial change
            subject = _event_apply(event, actor)
    except RegistryError as exc:
        return Outcome(code="AE", problem=_registry_problem(exc), event_time=event_time)
    except (Refusal, IntegrityError, DataError) as exc:
        # Content the services or the database refuse in a way no code above names: still an
        # answer (AE), or the sender would resend the same message for ever.
        logger.warning("HL7 %s not applied: %s", event.event, exc)
        problem = Problem(code=ack.APPLICATION_INTERNAL_ERROR, text=f"not applied ({type(exc).__name__})")
        return Outcome(code="AE", problem=problem, event_time=event_time)
    return Outcome(code="AA", subject=subject, event_time=event_time)


def _outcome(received: Received, text: str, unreadable: str | None, actor: Actor) -> Outcome:
    if received.truncated:
        limit = settings.PERFUSE_HL7_MAX_BYTES
        return Outcome(code="AR", problem=Problem(VALUE_TOO_LONG, f"the message is larger than {limit} bytes"))
    if unreadable is not None:
        return Outcome(code="AR", problem=Problem(ack.DATA_TYPE_ERROR, unreadable, Location("MSH", 1, 18)))
    return _apply(text, actor)


def _store(received: Received, header: MessageHeader | None, outcome: Outcome, ack_text: str) -> Hl7Message:
    sender, control_id = _key_of(header)
    kind = "^".join(padded(header.components(9), 2)) if header is not None else ""
    return Hl7Message.objects.create(
        received_at=dt.datetime.now(dt.UTC),
        peer=received.peer[:80],
        sender=sender,
        control_id=control_id,
        message_type=kind[:40],
        version=(header.components(12)[0] if header is not None else "")[:20],
        raw=received.raw,
        truncated=received.truncated,
        digest=hashlib.sha256(received.raw).hexdigest(),
        ack_code=outcome.code,
        ack=ack_text,
        error=(outcome.problem.text if outcome.problem else "")[:200],
        subject=outcome.subject,
    )


def _audit(actor: Actor, stored: Hl7Message, outcome: Outcome) -> None:
    problem = outcome.problem
    audit_record(
        actor=actor,
        action=ACTION,
        subject=stored.subject,
        outcome="allowed" if outcome.code == "AA" else "denied",
        detail={
            "message": stored.id,
            "sender": stored.sender,
            "control_id": stored.control_id,
            "type": stored.message_type,
            "version": stored.version,
            "ack": outcome.code,
            "error_code": problem.code if problem else "",
            "error_location": str(problem.location) if problem and problem.location else "",
            "event_time": outcome.event_time,
        },
    )


def _repeat(sender: str, control_id: str, raw: bytes) -> str | None:
    stored = Hl7Message.objects.filter(sender=sender, control_id=control_id).values_list("ack", "digest").first()
    if stored is None:
        return None
    if stored[1] != hashlib.sha256(raw).hexdigest():
        # Same key, other bytes: the contract answers by MSH-10; an operator should know.
        logger.warning(
            "HL7 MSH-10 %r from %r reused for a different message: answered as the first", control_id, sender
        )
    return stored[0]


def hl7_message_handle(*, received: Received, actor: Actor) -> str:
    """Apply (or recognise as a repeat) one message and return the ACK to send, after the commit."""
    text, unreadable = _codec(received.raw)
    header = _header_or_none(text)
    sender, control_id = _key_of(header)
    with transaction.atomic():
        if control_id:
            _lock(f"hl7|{sender}|{control_id}")
            stored_ack = _repeat(sender, control_id, received.raw)
            if stored_ack is not None:
                return stored_ack
        outcome = _outcome(received, text, unreadable, actor)
        ack_text = ack_build(
            context=context_of(header, text),
            code=outcome.code,
            problem=outcome.problem,
            application=settings.PERFUSE_HL7_APPLICATION,
            facility=settings.PERFUSE_HL7_FACILITY,
        )
        stored = _store(received, header, outcome, ack_text)
        _audit(actor, stored, outcome)
    return ack_text


def charset_of(raw: bytes) -> str:
    """The codec to answer a message in: its MSH-18 character set when Perfuse knows it."""
    try:
        declared = header_read(raw.decode("latin-1")).components(18)[0].strip()
    except HeaderError:
        return "utf-8"
    return CHARSETS.get(declared, "utf-8")
