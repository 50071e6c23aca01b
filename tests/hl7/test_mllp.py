"""MLLP framing: whole messages out of a byte stream, noise skipped, caps enforced, half messages
never handed on; the client round trip over real TCP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from telemetry.hl7.mllp import (
    FramingError,
    IncompleteMessage,
    MessageTooLarge,
    MllpReader,
    frame,
    mllp_send,
)


def _stream(*chunks: bytes, eof: bool = True) -> asyncio.StreamReader:
    stream = asyncio.StreamReader()
    for chunk in chunks:
        stream.feed_data(chunk)
    if eof:
        stream.feed_eof()
    return stream


async def _all(reader: MllpReader) -> list[bytes]:
    return [message async for message in reader]


def test_frame_wraps_and_refuses_block_characters() -> None:
    assert frame(b"MSH|x") == b"\x0bMSH|x\x1c\x0d"
    with pytest.raises(ValueError, match="block"):
        frame(b"MSH|\x1cx")


async def test_messages_split_across_chunks_and_joined_in_one() -> None:
    stream = _stream(b"\x0bA|1\r", b"B|2\x1c", b"\x0d\x0bC\x1c\x0d\x0bD\x1c\x0d")
    assert await _all(MllpReader(stream)) == [b"A|1\rB|2", b"C", b"D"]


async def test_noise_before_a_start_block_is_skipped_and_counted() -> None:
    reader = MllpReader(_stream(b"GET / HTTP/1.1\r\n\r\n\x0bMSH\x1c\x0d\n\n\x0bPID\x1c\x0d\r\n"))
    assert await _all(reader) == [b"MSH", b"PID"]
    assert reader.skipped == len(b"GET / HTTP/1.1\r\n\r\n") + 2 + 2


async def test_endless_noise_is_refused_at_the_cap() -> None:
    with pytest.raises(FramingError, match="without an MLLP start block"):
        await MllpReader(_stream(b"x" * 5000), max_bytes=1000).read_message()


async def test_a_start_block_inside_a_message_is_a_framing_error() -> None:
    with pytest.raises(FramingError, match="inside a message"):
        await MllpReader(_stream(b"\x0bMSH|half\x0bMSH|again\x1c\x0d")).read_message()


async def test_an_end_block_without_carriage_return_is_a_framing_error() -> None:
    with pytest.raises(FramingError, match="carriage return"):
        await MllpReader(_stream(b"\x0bMSH\x1cX")).read_message()


async def test_a_half_message_then_end_of_stream_is_incomplete() -> None:
    reader = MllpReader(_stream(b"\x0bWHOLE\x1c\x0d\x0bMSH|half"))
    assert await reader.read_message() == b"WHOLE"
    with pytest.raises(IncompleteMessage) as refused:
        await reader.read_message()
    assert refused.value.received == len(b"MSH|half")


async def test_a_half_trailer_then_end_of_stream_is_incomplete() -> None:
    with pytest.raises(IncompleteMessage):
        await MllpReader(_stream(b"\x0bMSH\x1c")).read_message()


async def test_a_message_over_the_cap_is_refused_without_reading_it_all() -> None:
    stream = asyncio.StreamReader()
    stream.feed_data(b"\x0bMSH|^~\\&|A\r")
    big = b"x" * (10 * 1024 * 1024)
    stream.feed_data(big)  # still unread in the stream when the reader gives up
    reader = MllpReader(stream, max_bytes=100_000)
    with pytest.raises(MessageTooLarge) as refused:
        await reader.read_message()
    assert refused.value.head.startswith(b"MSH|^~\\&|A\r")
    assert len(refused.value.head) <= 4096
    left = len(stream._buffer)  # what the reader never pulled out of the socket buffer
    assert left >= len(big) - 200_000


async def test_a_message_exactly_at_the_cap_is_accepted() -> None:
    assert await MllpReader(_stream(frame(b"y" * 1000)), max_bytes=1000).read_message() == b"y" * 1000
    with pytest.raises(MessageTooLarge):
        await MllpReader(_stream(frame(b"y" * 1001)), max_bytes=1000).read_message()


@pytest.fixture
async def echo_server() -> AsyncIterator[int]:
    """A real TCP peer answering each message with `ACK:` + the message."""

    async def handle(stream: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async for message in MllpReader(stream):
            writer.write(frame(b"ACK:" + message))
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def test_mllp_send_returns_the_reply_over_tcp(echo_server: int) -> None:
    assert await mllp_send("127.0.0.1", echo_server, b"MSH|1", timeout=5) == b"ACK:MSH|1"


async def test_mllp_send_times_out_on_a_silent_peer() -> None:
    async def silent(stream: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await stream.read()  # never answers

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(TimeoutError):
            await mllp_send("127.0.0.1", port, b"MSH|1", timeout=0.2)
