"""A results receiver to try the ORU feed without an EHR: it prints every message it gets and
answers each with an original-mode ACK AA.

    python -m telemetry.hl7.receiver --port 12576

then run Perfuse with PERFUSE_HL7_ORU_TARGET=127.0.0.1:12576 (docs/hl7-results.md). Plain Python, no
Django: it only frames (telemetry/hl7/mllp.py) and builds ACKs (telemetry/hl7/ack.py).
`MllpServer` takes any `respond(message) -> reply | None` (None closes the connection without a
reply), which is how the tests' EHR stand-in (tests/hl7_peer.py) NAKs, stalls and drops, and how
bench/hl7.py measures ORU throughput against a local peer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from telemetry.hl7.ack import AckContext, Problem, ack_build
from telemetry.hl7.er7 import HeaderError, header_read
from telemetry.hl7.mllp import MllpError, MllpReader, frame

Respond = Callable[[bytes], Awaitable[bytes | None]]
APPLICATION = "PERFUSE-RECEIVER"


def ack_for(message: bytes, code: str = "AA", *, text: str = "", error: str = "207") -> bytes:
    """The original-mode ACK of `message` with MSA-1 `code` (an ERR segment with `text` for AE/AR)."""
    decoded = message.decode("utf-8", errors="replace")
    try:
        header = header_read(decoded)
        context = AckContext(
            control_id=header.text(10),
            version=header.text(12) or "2.6",
            event=header.components(9)[1] if len(header.components(9)) > 1 else "",
            processing_id=header.text(11) or "P",
            receiving_application=header.text(3),
            receiving_facility=header.text(4),
        )
    except HeaderError as exc:
        code, text, context = "AR", str(exc), AckContext()
    problem = Problem(code=error, text=text or "rejected") if code != "AA" else None
    reply = ack_build(context=context, code=code, problem=problem, application=APPLICATION, facility="")
    return reply.encode("utf-8")


@dataclass
class MllpServer:
    """An MLLP server on host:port (port 0: any free port) answering each message with `respond`."""

    respond: Respond
    host: str = "127.0.0.1"
    port: int = 0
    tls: ssl.SSLContext | None = None
    _server: asyncio.base_events.Server | None = None
    _connections: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._connection, self.host, self.port, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Stop listening and drop every open connection (a receiver that went away)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _connection(self, stream: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            async for message in MllpReader(stream):
                reply = await self.respond(message)
                if reply is None:
                    break
                writer.write(frame(reply))
                await writer.drain()
        except (MllpError, ConnectionError, ssl.SSLError):
            pass  # a peer that sends garbage or goes away: this connection ends, the server goes on
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()


async def _print_and_accept(message: bytes) -> bytes:
    text = message.decode("utf-8", errors="replace")
    print(text.replace("\r", "\n"), flush=True)
    return ack_for(message)


async def _accept(message: bytes) -> bytes:
    return ack_for(message)


async def _serve(host: str, port: int, *, quiet: bool) -> None:
    server = MllpServer(_accept if quiet else _print_and_accept, host=host, port=port)
    bound = await server.start()
    shown = "answered AA" if quiet else "printed and answered AA"
    print(f"receiving HL7 on {host}:{bound} (every message is {shown})", file=sys.stderr, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print and acknowledge (AA) HL7 messages sent over MLLP.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12576)
    parser.add_argument("--quiet", action="store_true", help="do not print the messages (load tests)")
    options = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(options.host, options.port, quiet=options.quiet))


if __name__ == "__main__":
    main()
