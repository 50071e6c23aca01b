"""An EHR stand-in for the ORU tests and the benchmark: a real MLLP server over TCP on loopback, in a
thread of its own, that answers each message as it is told — ACK AA, NAK AE or AR, a stall (no
answer at all) or a dropped connection — and records what arrived. It can be stopped (it stops
listening and drops its connections, like an EHR interface engine going down) and started again
on the same port."""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from telemetry.hl7.er7 import header_read
from telemetry.hl7.receiver import MllpServer, ack_for

BEHAVIOURS = ("AA", "AE", "AR", "stall", "drop")


class EhrPeer:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.port = 0
        self.received: list[str] = []  # each message's text, in arrival order
        self._script: list[str] = []
        self._changed = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ehr-peer", daemon=True)
        self._server = MllpServer(self._respond, tls=tls)
        self._thread.start()

    # --- commands from the test's thread --------------------------------------------------------

    def then(self, *behaviours: str) -> None:
        """How to answer the next messages, in order; after them, AA."""
        assert set(behaviours) <= set(BEHAVIOURS), behaviours
        with self._changed:
            self._script.extend(behaviours)

    def start(self) -> int:
        self.port = self._call(self._server.start())
        self._server.port = self.port  # a restart binds the same port again
        return self.port

    def stop(self) -> None:
        self._call(self._server.stop())

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def control_ids(self) -> list[str]:
        with self._changed:
            return [header_read(text).control_id for text in self.received]

    def wait(self, predicate: Callable[[EhrPeer], bool], timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.2))
        return True

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    # --- in the peer's event loop ---------------------------------------------------------------

    async def _respond(self, message: bytes) -> bytes | None:
        with self._changed:
            self.received.append(message.decode("utf-8"))
            behaviour = self._script.pop(0) if self._script else "AA"
            self._changed.notify_all()
        if behaviour == "stall":
            await asyncio.sleep(3600)  # until the sender gives up on it and the test stops the peer
        if behaviour == "drop":
            return None
        return ack_for(message, behaviour, text=f"stand-in answers {behaviour}")


@contextmanager
def ehr_peer(tls: ssl.SSLContext | None = None) -> Iterator[EhrPeer]:
    peer = EhrPeer(tls)
    peer.start()
    try:
        yield peer
    finally:
        peer.close()
