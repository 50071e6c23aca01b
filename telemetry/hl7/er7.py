"""ER7 (pipe-and-hat) details that must work before, and without, the HL7 library: the message
header read by hand, escaping, and HL7 times.

The header is read by hand because the answer to a message depends on it even when the message
cannot be parsed: an AR for wrong encoding characters or an unsupported version must still
carry MSA-2 = the incoming MSH-10 and go back to MSH-3/MSH-4. Everything past the header is
parsed by hl7apy (telemetry/hl7/adt.py).
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from dataclasses import dataclass

STANDARD_ENCODING = "^~\\&"
CONTROL_ID_MAX = 199  # MSH-10 is ST(199) from v2.5 on
_SEGMENT_BREAK = re.compile(r"\r\n|\r|\n")
_TIME = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?([+-]\d{4})?$")


class HeaderError(ValueError):
    """The bytes do not start with a usable MSH segment; `field` is the MSH field at fault."""

    def __init__(self, field: int, text: str) -> None:
        super().__init__(text)
        self.field = field


@dataclass(frozen=True)
class Encoding:
    field: str
    component: str
    repetition: str
    escape: str
    subcomponent: str


@dataclass(frozen=True)
class MessageHeader:
    """The MSH fields Perfuse acts on, unescaped (components kept as sent, joined by '^')."""

    encoding: Encoding
    fields: tuple[str, ...]  # fields[n] is MSH-n as sent (MSH-1, the separator, is fields[1])

    def get(self, number: int) -> str:
        return self.fields[number] if number < len(self.fields) else ""

    def components(self, number: int) -> list[str]:
        raw = self.get(number).split(self.encoding.repetition)[0]
        return [unescape(part, self.encoding) for part in raw.split(self.encoding.component)]

    def text(self, number: int) -> str:
        """The field in the standard encoding, whatever separators the sender used."""
        return "^".join(escape(part) for part in self.components(number)).rstrip("^")

    @property
    def control_id(self) -> str:
        return unescape(self.get(10), self.encoding)

    @property
    def sender(self) -> str:
        return f"{self.text(3)}|{self.text(4)}"


def padded(parts: list[str], count: int) -> list[str]:
    """The first `count` components, empty strings for those not sent."""
    return [*parts, *[""] * count][:count]


def segments(text: str) -> list[str]:
    """Segments of a message; CR is the HL7 terminator, but LF and CRLF from files are accepted."""
    return [segment for segment in _SEGMENT_BREAK.split(text) if segment]


def header_read(text: str) -> MessageHeader:
    """The MSH segment of `text`, or HeaderError (not HL7, or encoding characters that cannot work)."""
    if not text.startswith("MSH") or len(text) < 8:
        raise HeaderError(0, "the message does not start with an MSH segment")
    separator = text[3]
    first = segments(text)[0]
    fields = first.split(separator)
    encoding_chars = fields[1] if len(fields) > 1 else ""
    if separator.isalnum() or separator.isspace():
        raise HeaderError(1, f"field separator {separator!r} is not a delimiter")
    chars = encoding_chars[:4]
    if len(chars) < 4 or len({separator, *chars}) != 5 or any(c.isalnum() or c.isspace() for c in chars):
        raise HeaderError(2, f"encoding characters {encoding_chars!r} are not four distinct delimiters")
    encoding = Encoding(separator, chars[0], chars[1], chars[2], chars[3])
    # fields[0] is "MSH"; MSH-1 is the separator itself, so MSH-n is fields[n - 1] of the split.
    return MessageHeader(encoding=encoding, fields=("MSH", separator, *fields[1:]))


def control_id_guess(text: str) -> str:
    """MSH-10 of a header too broken to read (e.g. wrong encoding characters), split on the
    field separator alone: "" when there is none. Only to answer it, never as a key."""
    if not text.startswith("MSH") or len(text) < 4:
        return ""
    fields = segments(text)[0].split(text[3])
    return fields[9].strip()[:CONTROL_ID_MAX] if len(fields) > 9 else ""


def unescape(value: str, encoding: Encoding) -> str:
    """Undo the HL7 escape sequences for delimiters (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\); others are kept."""
    esc = encoding.escape
    if esc not in value:
        return value
    replacements = {
        "F": encoding.field,
        "S": encoding.component,
        "T": encoding.subcomponent,
        "R": encoding.repetition,
        "E": esc,
    }
    pattern = re.compile(re.escape(esc) + "([FSTRE])" + re.escape(esc))
    return pattern.sub(lambda match: replacements[match.group(1)], value)


def escape(value: str) -> str:
    """`value` as field text in the standard encoding (|^~\\&); line breaks and the MLLP block
    characters become spaces."""
    value = value.replace("\x0b", " ").replace("\x1c", " ")
    value = value.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")
    value = value.replace("&", "\\T\\").replace("~", "\\R\\")
    return " ".join(_SEGMENT_BREAK.split(value))


def hl7_time(moment: dt.datetime) -> str:
    """A DTM with seconds and UTC offset, valid in every version 2.3 to 2.8."""
    return moment.astimezone(dt.UTC).strftime("%Y%m%d%H%M%S+0000")


def time_parse(value: str, *, zone: str) -> dt.datetime | None:
    """An HL7 DTM/TS (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]) as an aware datetime; None if not one.

    A time without an offset is the sender's local time: it is read in `zone` (PERFUSE_HL7_TIME_ZONE)."""
    match = _TIME.match(value.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    try:
        tz: dt.tzinfo = zoneinfo.ZoneInfo(zone)
        if offset:
            sign = -1 if offset[0] == "-" else 1
            tz = dt.timezone(sign * dt.timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5])))
        return dt.datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((fraction or "0").ljust(6, "0")[:6]),
            tzinfo=tz,
        )
    except ValueError:
        return None


def date_parse(value: str) -> dt.date | None:
    """The date of an HL7 DT/DTM (at least YYYYMMDD); None if it is not a whole valid date."""
    match = _TIME.match(value.strip())
    if match is None or match.group(3) is None:
        return None
    try:
        return dt.date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    except ValueError:
        return None
