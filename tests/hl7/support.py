"""HL7 test helpers: ADT messages of any event and version, validation of every message in and
out against its version's structure with hl7apy (strict), and the real listener on a free port
in a background thread (its own event loop, the database work in its worker threads, as in
`manage.py run_hl7`)."""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.parser import get_message_info, parse_segments
from hl7apy.validation import Validator

from telemetry.hl7.adt import STRUCTURES
from telemetry.hl7.listener import Listener
from telemetry.hl7.mllp import frame, mllp_send

_ids = itertools.count(1)
OLD_VERSIONS = {"2.3", "2.3.1"}  # MSH-9 has two components (no message structure)
NO_EVN_1 = {"2.7", "2.8", "2.8.1", "2.8.2"}  # EVN-1 (event type) was withdrawn in 2.7


def adt(
    event: str,
    *,
    version: str = "2.5",
    control_id: str | None = None,
    mrn: str = "12345",
    ward: str = "icu-a",
    room: str = "",
    bed: str = "bed-3",
    name: str = "Doe^Jane^Q",
    birth: str = "19800101",
    processing: str = "P",
    when: str = "20261201112000",
    pid3: str | None = None,
    extra: tuple[str, ...] = (),
) -> str:
    """An ADT message as a sending system writes it, segments joined by CR."""
    control_id = control_id or f"MSG{next(_ids):06d}"
    kind = f"ADT^{event}" if version in OLD_VERSIONS else f"ADT^{event}^{STRUCTURES.get(event, 'ADT_A01')}"
    evn_1 = "" if version in NO_EVN_1 else event
    identifier = pid3 if pid3 is not None else f"{mrn}^^^HOSP^MR"
    segments = [
        f"MSH|^~\\&|ADT1|HOSP|PERFUSE|PERFUSE|{when}||{kind}|{control_id}|{processing}|{version}",
        f"EVN|{evn_1}|{when}",
        f"PID|1||{identifier}||{name}||{birth}|F",
        f"PV1|1|I|{ward}^{room}^{bed}",
        *extra,
    ]
    return "\r".join(segments)


def validated(text: str, structure: str) -> Message:
    """`text` parsed strictly as `structure` of its MSH-12 version and validated; raises if not valid."""
    encoding_chars, _, version = get_message_info(text)
    message = Message(
        name=structure, version=version, validation_level=VALIDATION_LEVEL.STRICT, encoding_chars=encoding_chars
    )
    message.children = parse_segments(
        text, message.version, encoding_chars, VALIDATION_LEVEL.STRICT, message.reference, True
    )
    Validator.validate(message)
    return message


def valid_adt(text: str) -> str:
    event = text.split("\r")[0].split("|")[8].split("^")[1]
    validated(text, STRUCTURES[event])
    return text


def valid_ack(text: str) -> str:
    validated(text, "ACK")
    return text


@dataclass(frozen=True)
class Ack:
    text: str

    def segment(self, name: str) -> list[str]:
        for segment in self.text.split("\r"):
            if segment.startswith(name + "|"):
                return segment.split("|")
        return []

    @property
    def code(self) -> str:
        return self.segment("MSA")[1]

    @property
    def control_id(self) -> str:
        return self.segment("MSA")[2]

    @property
    def err_location(self) -> str:
        """ERR-2 (v2.5 on), or the location part of ERR-1 (ELD, before 2.5)."""
        err = self.segment("ERR")
        if not err:
            return ""
        if err[1]:
            return "^".join(err[1].split("^")[:3])
        return err[2]

    @property
    def err_code(self) -> str:
        err = self.segment("ERR")
        if not err:
            return ""
        return err[1].split("^")[3].split("&")[0] if err[1] else err[3].split("^")[0]


class RunningListener:
    """The listener in a thread of its own with its own event loop; `port` is where it listens."""

    def __init__(self, **options: object) -> None:
        self._loop = asyncio.new_event_loop()
        self.listener = Listener(host="127.0.0.1", port=0, **options)  # type: ignore[arg-type]
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self.listener.start(), self._loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.listener.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def send(self, message: str, *, timeout: float = 30) -> Ack:
        """Send one message (validated first, as hl7apy reads it) and return the validated ACK."""
        reply = asyncio.run(mllp_send("127.0.0.1", self.port, message.encode(), timeout=timeout)).decode()
        return Ack(valid_ack(reply))

    def send_unchecked(self, payload: bytes, *, timeout: float = 30) -> Ack:
        """Send bytes as one MLLP message without validating them (malformed input)."""
        reply = asyncio.run(mllp_send("127.0.0.1", self.port, payload, timeout=timeout)).decode("latin-1")
        return Ack(valid_ack(reply))

    def raw_socket(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        return sock


def read_frame(sock: socket.socket) -> bytes:
    """One MLLP frame from a plain socket (b"" when the peer closed first)."""
    data = b""
    while not data.endswith(b"\x1c\r"):
        chunk = sock.recv(65536)
        if not chunk:
            return b""
        data += chunk
    assert data.startswith(b"\x0b")
    return data[1:-2]


def listener_running(**options: object) -> Iterator[RunningListener]:
    running = RunningListener(**options)
    try:
        yield running
    finally:
        running.close()


__all__ = [
    "Ack",
    "RunningListener",
    "adt",
    "frame",
    "listener_running",
    "read_frame",
    "valid_ack",
    "valid_adt",
    "validated",
]
