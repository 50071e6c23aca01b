"""Reading ADT without the network or the database: whatever the bytes, the answer is an event
or a Rejected (AE/AR), never another exception (which would leave the sender without an ACK,
resending for ever). Plus the header reader's edge cases."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telemetry.hl7.adt import Rejected, adt_read
from telemetry.hl7.er7 import HeaderError, date_parse, header_read, time_parse, unescape
from tests.hl7.support import adt

VALID = adt("A01")
DELIMITERS = "|^~\\&\r\n"


def _read(text: str) -> str:
    try:
        adt_read(text, processing_id="P", zone="UTC")
    except Rejected as rejected:
        assert rejected.code in {"AE", "AR"}
        return rejected.code
    return "AA"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.sampled_from(list(DELIMITERS + "MSHPIDV01AXZ9 é")), max_size=300))
def test_arbitrary_text_is_read_or_rejected(text: str) -> None:
    _read(text)
    _read("MSH|^~\\&|" + text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=len(VALID) - 1), st.text(alphabet=DELIMITERS + "x9", max_size=5))
def test_a_valid_message_with_a_stretch_replaced_is_read_or_rejected(at: int, insert: str) -> None:
    _read(VALID[:at] + insert + VALID[at + len(insert) :])


def test_the_valid_message_is_read() -> None:
    header, event = adt_read(VALID, processing_id="P", zone="UTC")
    assert (header.control_id, event.event, event.identity.mrn, event.ward_code, event.bed) == (
        VALID.split("|")[9],
        "A01",
        "12345",
        "icu-a",
        "bed-3",
    )


def test_other_delimiters_are_read_and_unescaped() -> None:
    text = VALID.replace("|", "#").replace("^", "!")  # field separator # and component separator !
    header = header_read(text)
    assert (header.encoding.field, header.encoding.component) == ("#", "!")
    assert header.components(9)[:2] == ["ADT", "A01"]
    assert header.sender == "ADT1|HOSP"
    assert unescape("O\\T\\Brien \\F\\ \\S\\ \\E\\", header.encoding) == "O&Brien # ! \\"
    _, event = adt_read(text.replace("Doe!Jane!Q", "O\\T\\Brien!Jane"), processing_id="P", zone="UTC")
    assert (event.identity.mrn, event.identity.name, event.ward_code) == ("12345", "O&Brien, Jane", "icu-a")


@pytest.mark.parametrize("text", ["", "MSH", "PID|1", "MSH|^~\\", "MSHA^~\\&|x", "MSH|^~\\\\|x", "MSH|^~ &|x"])
def test_unusable_headers_are_header_errors(text: str) -> None:
    with pytest.raises(HeaderError):
        header_read(text)


def test_hl7_times_and_dates() -> None:
    assert time_parse("20261201112000+0100", zone="UTC").isoformat() == "2026-12-01T11:20:00+01:00"  # type: ignore[union-attr]
    assert time_parse("202612011120", zone="Europe/Paris").utcoffset().total_seconds() == 3600  # type: ignore[union-attr]
    assert time_parse("2026130111", zone="UTC") is None
    assert time_parse("soon", zone="UTC") is None
    assert str(date_parse("19800101")) == "1980-01-01"
    assert date_parse("198001") is None and date_parse("19800230") is None
