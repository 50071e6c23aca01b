"""The ADT listener: an asyncio TCP (or TLS) server speaking MLLP, one message at a time per
connection, each answered with its ACK before the next is read.

The event loop only frames bytes; the database work of a message (telemetry/hl7/services.py)
runs in a worker thread (`sync_to_async(thread_sensitive=False)`), so a slow transaction on one
connection never stalls the others. Whatever a peer sends, the listener survives it:
- a message over PERFUSE_HL7_MAX_BYTES: AR (stored, with its beginning), then the connection is
  closed (the rest of the oversized frame is never read into memory);
- broken framing (a start block inside a message, an end block without CR, endless noise): the
  connection is closed, nothing applied;
- a half message and a dropped connection, or no complete message for PERFUSE_HL7_IDLE_SECONDS:
  closed, nothing applied (a half message is never handed on);
- anything framed that is not HL7 we accept: an AR, and the connection stays open;
- an unexpected failure applying a message (the database is down): logged, the connection is
  closed without an ACK, so the sender resends later; the listener goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections

from audit.trail import Actor
from telemetry.hl7.mllp import MessageTooLarge, MllpError, MllpReader, frame
from telemetry.hl7.services import Received, charset_of, hl7_message_handle

logger = logging.getLogger(__name__)

ACTOR_NAME = "hl7-adt"


def listen_address(value: str) -> tuple[str, int]:
    """host:port (IPv6 as [::1]:port) from PERFUSE_HL7_LISTEN."""
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"PERFUSE_HL7_LISTEN must be host:port, got {value!r}")
    return host.strip("[]"), int(port)


def tls_context() -> ssl.SSLContext | None:
    """A server TLS context when PERFUSE_HL7_TLS_CERT and _KEY are set; client certificates are
    required when PERFUSE_HL7_TLS_CLIENT_CA is set too."""
    cert, key = settings.PERFUSE_HL7_TLS_CERT, settings.PERFUSE_HL7_TLS_KEY
    if not cert and not key:
        return None
    if not (cert and key):
        raise ValueError("set both PERFUSE_HL7_TLS_CERT and PERFUSE_HL7_TLS_KEY, or neither")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if settings.PERFUSE_HL7_TLS_CLIENT_CA:
        context.load_verify_locations(settings.PERFUSE_HL7_TLS_CLIENT_CA)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _handle_in_thread(received: Received, actor: Actor) -> bytes:
    close_old_connections()  # as Django does around a request: drop a connection that broke
    try:
        reply = hl7_message_handle(received=received, actor=actor)
    finally:
        close_old_connections()
    return reply.encode(charset_of(received.raw), errors="replace")


_handle = sync_to_async(_handle_in_thread, thread_sensitive=False)


@dataclass
class Listener:
    """One server; `start()` binds (port 0: any free port, see `port`), `stop()` closes it."""

    host: str
    port: int
    tls: ssl.SSLContext | None = None
    max_bytes: int = 1024 * 1024
    idle_seconds: float = 600.0
    _server: asyncio.base_events.Server | None = None
    _connections: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._connection, self.host, self.port, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("HL7 listener on %s:%d%s", self.host, self.port, " (TLS)" if self.tls else "")
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._connections):
            task.cancel()  # a message being applied finishes in its thread; its ACK is not sent
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _connection(self, stream: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer = _peer_name(writer)
        actor = Actor(user_id=None, username=ACTOR_NAME, role="system", source_address=peer.rpartition(":")[0])
        try:
            await self._serve(MllpReader(stream, max_bytes=self.max_bytes), writer, peer, actor)
        except MessageTooLarge as exc:
            logger.warning("HL7 %s: %s; answered AR, connection closed", peer, exc)
            await self._reply(writer, Received(raw=exc.head, peer=peer, truncated=True), actor)
        except (MllpError, TimeoutError, ConnectionError, ssl.SSLError) as exc:
            logger.warning("HL7 %s: %s; connection closed", peer, exc or type(exc).__name__)
        except Exception:
            logger.exception("HL7 %s: failed to handle a message; connection closed without an ACK", peer)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    async def _serve(self, reader: MllpReader, writer: asyncio.StreamWriter, peer: str, actor: Actor) -> None:
        while True:
            async with asyncio.timeout(self.idle_seconds):
                message = await reader.read_message()
            if message is None:
                return
            await self._reply(writer, Received(raw=message, peer=peer), actor)

    async def _reply(self, writer: asyncio.StreamWriter, received: Received, actor: Actor) -> None:
        reply = await _handle(received, actor)
        writer.write(frame(reply))
        await writer.drain()


def _peer_name(writer: asyncio.StreamWriter) -> str:
    address = writer.get_extra_info("peername") or ("", 0)
    return f"{address[0]}:{address[1]}"


def listener_from_settings() -> Listener:
    host, port = listen_address(settings.PERFUSE_HL7_LISTEN)
    return Listener(
        host=host,
        port=port,
        tls=tls_context(),
        max_bytes=settings.PERFUSE_HL7_MAX_BYTES,
        idle_seconds=settings.PERFUSE_HL7_IDLE_SECONDS,
    )


async def hl7_listener_run(*, stop: asyncio.Event, ready: Callable[[int], None] | None = None) -> None:
    """Serve ADT on PERFUSE_HL7_LISTEN until `stop` is set (run_hl7 runs it beside the ORU sender)."""
    listener = listener_from_settings()
    port = await listener.start()
    if ready is not None:
        ready(port)
    try:
        await stop.wait()
    finally:
        await listener.stop()
