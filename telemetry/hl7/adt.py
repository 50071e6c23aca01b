"""ADT messages in: from ER7 text to an `AdtEvent` Perfuse can act on, or the `Problem` that makes
the answer AE or AR.

The HL7 library is hl7apy rather than python-hl7. python-hl7 splits a message into segments,
fields and components and stops there: it knows no message structures, data types or versions,
so "validate against the version's structure" would be code of our own. hl7apy carries the
official structures, segments, data types and tables of every version 2.1 to 2.8.2, parses a
message into its structure (groups included), validates cardinality and data types
(`Validator.validate`), and its structures are what the tests check every message against, in
and out. Its cost is speed (about 10 to 15 ms to parse an ADT message here, fine for ADT rates: a
hospital sends a few messages a second at peak) and that it does not unescape values (er7.py does).

Order of the checks, each answered as the contract says:
1. the MSH segment, read by hand (er7.header_read): no MSH or unusable encoding characters → AR;
2. MSH-9 an ADT event Perfuse handles, MSH-12 a version 2.3 to 2.8, MSH-11 the configured
   processing id → otherwise AR (codes 200/201/203/202, ERR-2 the MSH field);
3. the structure of the event's message in that version, by hl7apy (parse tolerant of local
   conventions, then `Validator.validate`): a missing required segment or a wrong data type → AE;
4. the fields Perfuse uses: PID-3 with an identifier of type MR (the MRN), PID-5, PID-7, PV1-3
   (ward = point of care, bed = room and bed) → AE with ERR-2 naming the field.
What the services then refuse (an unknown ward, a discharge of an unknown patient) is AE too
(telemetry/hl7/services.py).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.parser import get_message_info, parse_segments
from hl7apy.validation import Validator

from telemetry.hl7 import ack
from telemetry.hl7.ack import AckContext, Location, Problem
from telemetry.hl7.er7 import (
    CONTROL_ID_MAX,
    Encoding,
    HeaderError,
    MessageHeader,
    control_id_guess,
    date_parse,
    header_read,
    padded,
    segments,
    time_parse,
    unescape,
)

VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8", "2.8.1", "2.8.2")
# Event → the abstract message structure it uses (the same in every version 2.3 to 2.8).
STRUCTURES = {
    "A01": "ADT_A01",
    "A02": "ADT_A02",
    "A03": "ADT_A03",
    "A04": "ADT_A01",
    "A08": "ADT_A01",
    "A11": "ADT_A09",
    "A13": "ADT_A01",
}
# Events that place the patient on a ward and so need PV1-3.
NEEDS_WARD = frozenset({"A01", "A02", "A04"})


class Rejected(Exception):
    """The message is answered AE or AR with `problem`; nothing is applied."""

    def __init__(self, code: str, problem: Problem) -> None:
        super().__init__(problem.text)
        self.code = code
        self.problem = problem


@dataclass(frozen=True)
class Identity:
    mrn: str
    name: str | None
    date_of_birth: dt.date | None


@dataclass(frozen=True)
class AdtEvent:
    event: str  # A01, A02, …
    identity: Identity
    ward_code: str  # PV1-3.1, "" when the event does not need it or it was empty
    bed: str  # PV1-3.2 and PV1-3.3 (room-bed), "" when absent
    occurred_at: dt.datetime | None  # EVN-6, else EVN-2; None when neither is a valid time


def context_of(header: MessageHeader | None, text: str) -> AckContext:
    """What the ACK repeats of the incoming header (defaults when it cannot be read)."""
    if header is None:
        return AckContext(control_id=control_id_guess(text))
    version = header.components(12)[0]
    return AckContext(
        control_id=header.control_id[:CONTROL_ID_MAX],
        version=version if version in VERSIONS else ack.FALLBACK_VERSION,
        event=padded(header.components(9), 2)[1][:3],
        processing_id=header.text(11) or "P",
        receiving_application=header.text(3),
        receiving_facility=header.text(4),
    )


def _reject(text: str, field: int, code: str) -> Rejected:
    return Rejected("AR", Problem(code=code, text=text, location=Location("MSH", 1, field)))


def header_accept(text: str, *, processing_id: str) -> MessageHeader:
    """The header of a message Perfuse accepts, or Rejected (AR)."""
    try:
        header = header_read(text)
    except HeaderError as exc:
        location = Location("MSH", 1, exc.field) if exc.field else None
        raise Rejected("AR", Problem(code=ack.DATA_TYPE_ERROR, text=str(exc), location=location)) from exc
    kind, event = padded(header.components(9), 2)
    if kind != "ADT":
        raise _reject(f"message type {kind!r} is not accepted (ADT only)", 9, ack.UNSUPPORTED_MESSAGE_TYPE)
    if event not in STRUCTURES:
        raise _reject(f"ADT event {event!r} is not supported", 9, ack.UNSUPPORTED_EVENT_CODE)
    version = header.components(12)[0]
    if version not in VERSIONS:
        raise _reject(f"HL7 version {version!r} is not supported (2.3 to 2.8)", 12, ack.UNSUPPORTED_VERSION_ID)
    if header.components(11)[0] != processing_id:
        raise _reject(
            f"processing id {header.text(11)!r} is not accepted here (expected {processing_id})",
            11,
            ack.UNSUPPORTED_PROCESSING_ID,
        )
    if not header.control_id:
        raise _reject("MSH-10 (message control id) is empty", 10, ack.REQUIRED_FIELD_MISSING)
    return header


def structure_parse(text: str, event: str) -> Message:
    """The message parsed into its event's structure by hl7apy and validated, or Rejected (AE).

    hl7apy would take the structure from MSH-9.3 or guess `ADT_<event>`, which does not exist
    for A04/A08/A11/A13 before 2.4 (MSH-9 has no third component there): the structure is
    named from the event instead, as the standard defines it."""
    body = "\r".join(segments(text))
    version = "?"
    try:
        encoding_chars, _, version = get_message_info(body)
        message = Message(
            name=STRUCTURES[event],
            version=version,
            validation_level=VALIDATION_LEVEL.TOLERANT,
            encoding_chars=encoding_chars,
        )
        message.children = parse_segments(
            body, message.version, encoding_chars, VALIDATION_LEVEL.TOLERANT, message.reference, True
        )
        Validator.validate(message)
    except Exception as exc:
        # Whatever the library raises on hostile input means "not valid": an AE the sender can
        # act on. Letting it escape would close the connection without an ACK, and the sender
        # would resend the same message for ever.
        code = ack.SEGMENT_SEQUENCE_ERROR if "child" in str(exc).lower() else ack.DATA_TYPE_ERROR
        problem = Problem(code=code, text=f"not a valid {STRUCTURES[event]} v{version}: {exc}"[:400])
        raise Rejected("AE", problem) from exc
    return message


def _fields(message: Message, segment: str, number: int) -> list[str]:
    """The repetitions of SEG-n of the first such segment, as ER7 text ([] when absent)."""
    for found in _all_segments(message):
        if found.name == segment:
            return [field.to_er7() for field in found.children if field.name == f"{segment}_{number}"]
    return []


def _all_segments(element: Message) -> list[Message]:
    """Every segment inside groups (hl7apy nests PID in a group in some structures)."""
    found: list[Message] = []
    for child in element.children:
        if child.classname == "Segment":
            found.append(child)
        elif child.classname == "Group":
            found += _all_segments(child)
    return found


def _components(value: str, encoding: Encoding) -> list[str]:
    return [unescape(part, encoding) for part in value.split(encoding.component)]


def _content_error(text: str, segment: str, field: int, code: str) -> Rejected:
    return Rejected("AE", Problem(code=code, text=text, location=Location(segment, 1, field)))


def _mrn(message: Message, encoding: Encoding) -> str:
    for identifier in _fields(message, "PID", 3):
        parts = padded(_components(identifier, encoding), 5)
        if parts[4] == "MR" and parts[0].strip():
            return parts[0].strip()[:40]
    raise _content_error("PID-3 has no identifier of type MR (the MRN)", "PID", 3, ack.REQUIRED_FIELD_MISSING)


def _name(message: Message, encoding: Encoding) -> str | None:
    names = _fields(message, "PID", 5)
    if not names:
        return None
    family, given, middle = padded(_components(names[0], encoding), 3)
    given_names = " ".join(part for part in (given, middle) if part)
    return ", ".join(part for part in (family, given_names) if part)[:200] or None


def _birth_date(message: Message) -> dt.date | None:
    values = _fields(message, "PID", 7)
    if not values or not values[0]:
        return None
    born = date_parse(values[0].split("^")[0])
    if born is None:
        raise _content_error(f"PID-7 {values[0]!r} is not a date (YYYYMMDD)", "PID", 7, ack.DATA_TYPE_ERROR)
    return born


def _place(message: Message, encoding: Encoding, event: str) -> tuple[str, str]:
    values = _fields(message, "PV1", 3)
    ward, room, bed = padded(_components(values[0], encoding) if values else [], 3)
    if event in NEEDS_WARD and not ward.strip():
        raise _content_error("PV1-3.1 (point of care: the ward) is empty", "PV1", 3, ack.REQUIRED_FIELD_MISSING)
    return ward.strip(), "-".join(part.strip() for part in (room, bed) if part.strip())[:40]


def _occurred_at(message: Message, zone: str) -> dt.datetime | None:
    for number in (6, 2):
        values = _fields(message, "EVN", number)
        if values and values[0]:
            moment = time_parse(values[0].split("^")[0], zone=zone)
            if moment is not None:
                return moment
    return None


def adt_read(text: str, *, processing_id: str, zone: str) -> tuple[MessageHeader, AdtEvent]:
    """The header and event of an accepted ADT message, or Rejected (AR or AE)."""
    header = header_accept(text, processing_id=processing_id)
    event = header.components(9)[1]
    message = structure_parse(text, event)
    encoding = header.encoding
    identity = Identity(mrn=_mrn(message, encoding), name=_name(message, encoding), date_of_birth=_birth_date(message))
    ward, bed = _place(message, encoding, event)
    return header, AdtEvent(
        event=event, identity=identity, ward_code=ward, bed=bed, occurred_at=_occurred_at(message, zone)
    )
