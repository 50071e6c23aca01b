"""Original-mode acknowledgements (HL7 v2 chapter 2): MSH, MSA and, for AE/AR, one ERR segment.

MSA-1 is AA (applied), AE (the content is wrong: an unknown ward, a discharge of an unknown
patient) or AR (not accepted: unsupported message type, event, version or processing id, not
HL7). MSA-2 is the incoming MSH-10. The ACK is written in the incoming message's version when
Perfuse supports it (2.5 otherwise), and the ERR segment in that version's layout: up to 2.4 the
location and code share ERR-1 (ELD: segment^sequence^field^code&text&HL70357); from 2.5 the
location is ERR-2 (ERL: e.g. PV1^1^3), the code ERR-3 (table 0357), the severity ERR-4, and the
human-readable reason ERR-8. MSA-3 (text) was withdrawn in 2.7 and is sent only before it.
Values are escaped; the ACK always uses the standard encoding characters.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

from telemetry.hl7.er7 import escape, hl7_time

FALLBACK_VERSION = "2.5"
# MSA-2 is required: when the incoming MSH-10 cannot be read (not HL7), this stands in for it.
UNREAD_CONTROL_ID = "UNKNOWN"
OLD_ERR_VERSIONS = frozenset({"2.3", "2.3.1", "2.4"})
MSA_TEXT_VERSIONS = frozenset({"2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6"})

# HL7 table 0357, message error condition codes.
SEGMENT_SEQUENCE_ERROR = "100"
REQUIRED_FIELD_MISSING = "101"
DATA_TYPE_ERROR = "102"
TABLE_VALUE_NOT_FOUND = "103"
UNSUPPORTED_MESSAGE_TYPE = "200"
UNSUPPORTED_EVENT_CODE = "201"
UNSUPPORTED_PROCESSING_ID = "202"
UNSUPPORTED_VERSION_ID = "203"
UNKNOWN_KEY_IDENTIFIER = "204"
DUPLICATE_KEY_IDENTIFIER = "205"
APPLICATION_RECORD_LOCKED = "206"
APPLICATION_INTERNAL_ERROR = "207"
CODE_TEXT = {
    SEGMENT_SEQUENCE_ERROR: "Segment sequence error",
    REQUIRED_FIELD_MISSING: "Required field missing",
    DATA_TYPE_ERROR: "Data type error",
    TABLE_VALUE_NOT_FOUND: "Table value not found",
    UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    UNSUPPORTED_EVENT_CODE: "Unsupported event code",
    UNSUPPORTED_PROCESSING_ID: "Unsupported processing id",
    UNSUPPORTED_VERSION_ID: "Unsupported version id",
    UNKNOWN_KEY_IDENTIFIER: "Unknown key identifier",
    DUPLICATE_KEY_IDENTIFIER: "Duplicate key identifier",
    APPLICATION_RECORD_LOCKED: "Application record locked",
    APPLICATION_INTERNAL_ERROR: "Application internal error",
}


@dataclass(frozen=True)
class Location:
    """Where an error is: segment, its sequence (1 for the first), field number (0: the segment)."""

    segment: str
    sequence: int = 1
    field: int = 0

    def __str__(self) -> str:
        return f"{self.segment}^{self.sequence}^{self.field}" if self.field else f"{self.segment}^{self.sequence}"


@dataclass(frozen=True)
class Problem:
    """Why a message is answered AE or AR: the HL7 error code, where, and a sentence for people."""

    code: str
    text: str
    location: Location | None = None


@dataclass(frozen=True)
class AckContext:
    """What of the incoming message the ACK repeats (all in the standard encoding already)."""

    control_id: str = ""
    version: str = FALLBACK_VERSION
    event: str = ""
    processing_id: str = "P"
    receiving_application: str = ""  # the incoming MSH-3, where the ACK goes
    receiving_facility: str = ""  # the incoming MSH-4


def _message_type(version: str, event: str) -> str:
    if version in {"2.3", "2.3.1"}:
        return f"ACK^{escape(event)}" if event else "ACK"
    return f"ACK^{escape(event)}^ACK" if event else "ACK^^ACK"


def _err(version: str, problem: Problem) -> str:
    text = escape(problem.text)
    code_text = CODE_TEXT.get(problem.code, "")
    location = problem.location
    if version in OLD_ERR_VERSIONS:
        place = f"{location.segment}^{location.sequence}^{location.field or ''}" if location else "^^"
        return f"ERR|{place}^{problem.code}&{code_text}&HL70357"
    return f"ERR||{location or ''}|{problem.code}^{code_text}^HL70357|E||||{text}"


def ack_build(
    *,
    context: AckContext,
    code: str,
    problem: Problem | None,
    application: str,
    facility: str,
    now: dt.datetime | None = None,
) -> str:
    """The ACK message, segments joined by CR (the MLLP frame is added by the listener)."""
    version = context.version
    msh = "|".join(
        [
            "MSH",
            "^~\\&",
            escape(application),
            escape(facility),
            context.receiving_application,
            context.receiving_facility,
            hl7_time(now or dt.datetime.now(dt.UTC)),
            "",
            _message_type(version, context.event),
            "A" + secrets.token_hex(8),  # our own MSH-10; the acknowledged one is MSA-2
            context.processing_id,
            escape(version),
        ]
    )
    msa = f"MSA|{code}|{escape(context.control_id) or UNREAD_CONTROL_ID}"
    if problem is not None and version in MSA_TEXT_VERSIONS:
        msa += f"|{escape(problem.text)}"
    lines = [msh, msa] + ([_err(version, problem)] if problem is not None else [])
    return "\r".join(lines)
