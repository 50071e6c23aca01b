"""Publishing alarm frames after commit without holding up the writer.

A committed transition is handed to one long-lived event loop in a daemon thread, which sends
frames to the channel layer in the order they were committed. The writer (the engine, or a web
request) never waits for Redis: creating an event loop and a Redis connection per frame, as
`async_to_sync(publish)` does from a plain thread, cost tens of milliseconds per frame and
stalled the engine during bursts (a gateway going silent raises many no-data alarms at once).
Frames are hints (rows are the truth), so a frame lost in a Redis outage is recovered by the
console's refetch; `telemetry.events.publish` already never raises.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from functools import partial
from typing import Any

from django.db import transaction

from telemetry import events

log = logging.getLogger(__name__)


class _Publisher:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[tuple[list[str], dict[str, Any]]] | None = None

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                ready = threading.Event()
                threading.Thread(target=self._run, args=(loop, ready), name="alarm-publisher", daemon=True).start()
                ready.wait()
                self._loop = loop
            return self._loop

    def _run(self, loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        self._queue = asyncio.Queue()
        ready.set()
        loop.run_until_complete(self._drain(self._queue))

    async def _drain(self, queue: asyncio.Queue[tuple[list[str], dict[str, Any]]]) -> None:
        while True:
            groups, event = await queue.get()
            await events.publish(groups, event)  # logs and swallows layer errors

    def submit(self, groups: list[str], event: dict[str, Any]) -> None:
        loop = self._start()
        assert self._queue is not None
        loop.call_soon_threadsafe(self._queue.put_nowait, (groups, event))


_publisher = _Publisher()


def publish_after_commit(groups: list[str], event: dict[str, Any]) -> None:
    transaction.on_commit(partial(_publisher.submit, groups, event))
