"""MLLP, the Minimal Lower Layer Protocol that carries HL7 v2 over TCP (HL7 v2.5.1 appendix C).

A message travels as VT (0x0b), the message bytes, FS (0x1c), CR (0x0d). The reader below keeps
one buffer per connection and never holds more than `max_bytes` of a message plus one chunk: a
peer sending a 10 MiB message to a 1 MiB cap is refused with `MessageTooLarge` after about 1 MiB,
not after buffering all of it. Bytes before a start block (line noise, a half frame left by a
sender that restarted, a stray newline between frames) are skipped and counted, up to the same
cap. A start block inside a message, or an FS not followed by CR, is a `FramingError`: the
stream cannot be trusted to resynchronise, so the caller closes the connection. A connection that
ends inside a message raises `IncompleteMessage`; the half message is never handed on, so nothing
acts on it.

`MllpConnection` and `mllp_send` are the client side (the ADT documentation's one-liner, tests,
and the ORU sender): write one framed message, read one framed reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from types import TracebackType

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\x0d"
TRAILER = END_BLOCK + CARRIAGE_RETURN
DEFAULT_MAX_BYTES = 1024 * 1024
CHUNK_BYTES = 64 * 1024
HEAD_BYTES = 4096  # what is kept of a refused message: enough for its MSH segment


class MllpError(Exception):
    """The byte stream is not a sequence of MLLP frames; the connection should be closed."""


class FramingError(MllpError):
    """A start block inside a message, an end block without CR, or too much noise between frames."""


class MessageTooLarge(MllpError):
    """The message grew past the cap; `head` is its beginning (to answer AR by its MSH-10)."""

    def __init__(self, max_bytes: int, head: bytes) -> None:
        super().__init__(f"message larger than {max_bytes} bytes")
        self.head = head


class IncompleteMessage(MllpError):
    """The connection ended inside a message (after its start block, before its end block)."""

    def __init__(self, received: int) -> None:
        super().__init__(f"connection closed after {received} bytes of a message")
        self.received = received


def frame(message: bytes) -> bytes:
    """One MLLP frame around `message` (which must not itself contain a start or end block)."""
    if START_BLOCK in message or END_BLOCK in message:
        raise ValueError("an HL7 message cannot contain MLLP block characters (0x0b, 0x1c)")
    return START_BLOCK + message + TRAILER


class MllpReader:
    """Whole messages from one stream, each at most `max_bytes` long (the frame's bytes excluded)."""

    def __init__(self, stream: asyncio.StreamReader, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self._max_bytes = max_bytes
        self.skipped = 0  # bytes seen outside any frame, for the listener's log

    async def read_message(self) -> bytes | None:
        """The next message, or None when the peer closed the connection between messages."""
        if not await self._seek_start():
            return None
        return await self._read_body()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[bytes]:
        while (message := await self.read_message()) is not None:
            yield message

    async def _fill(self) -> bool:
        chunk = await self._stream.read(CHUNK_BYTES)
        self._buffer += chunk
        return bool(chunk)

    async def _seek_start(self) -> bool:
        """Drop everything up to and including the next start block; False at end of stream."""
        noise = 0
        while (index := self._buffer.find(START_BLOCK)) < 0:
            noise += len(self._buffer)
            self._buffer.clear()
            if noise > self._max_bytes:
                raise FramingError(f"{noise} bytes without an MLLP start block")
            if not await self._fill():
                self.skipped += noise
                return False
        self.skipped += noise + index
        del self._buffer[: index + 1]
        return True

    async def _read_body(self) -> bytes:
        searched = 0
        while True:
            end = self._buffer.find(END_BLOCK, searched)
            limit = len(self._buffer) if end < 0 else end
            if START_BLOCK in self._buffer[searched:limit]:
                raise FramingError("a start block inside a message")
            if limit > self._max_bytes:
                raise MessageTooLarge(self._max_bytes, bytes(self._buffer[:HEAD_BYTES]))
            if 0 <= end < len(self._buffer) - 1:
                return self._take(end)
            searched = limit
            if not await self._fill():
                raise IncompleteMessage(len(self._buffer))

    def _take(self, end: int) -> bytes:
        if self._buffer[end + 1 : end + 2] != CARRIAGE_RETURN:
            raise FramingError("an end block not followed by a carriage return")
        message = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        return message


class MllpConnection:
    """A client connection: `await exchange(message)` sends one message and returns its reply."""

    def __init__(self, host: str, port: int, *, tls: ssl.SSLContext | None = None, max_bytes: int = DEFAULT_MAX_BYTES):
        self.host, self.port, self._tls, self._max_bytes = host, port, tls, max_bytes
        self._reader: MllpReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        stream, self._writer = await asyncio.open_connection(self.host, self.port, ssl=self._tls)
        self._reader = MllpReader(stream, max_bytes=self._max_bytes)

    async def exchange(self, message: bytes) -> bytes:
        if self._reader is None or self._writer is None:
            await self.open()
        assert self._reader is not None and self._writer is not None
        self._writer.write(frame(message))
        await self._writer.drain()
        reply = await self._reader.read_message()
        if reply is None:
            raise ConnectionResetError("the peer closed the connection without a reply")
        return reply

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):  # the peer is gone already; the socket is closed either way
                await writer.wait_closed()

    async def __aenter__(self) -> MllpConnection:
        await self.open()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()


async def mllp_send(
    host: str, port: int, message: bytes, timeout: float = 10.0, *, tls: ssl.SSLContext | None = None
) -> bytes:
    """Send one message on a fresh connection and return the peer's reply (its ACK)."""
    async with asyncio.timeout(timeout), MllpConnection(host, port, tls=tls) as connection:
        return await connection.exchange(message)
