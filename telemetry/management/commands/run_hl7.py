"""`manage.py run_hl7`: the MLLP process — the ADT listener, and beside it any other HL7
coroutine (the ORU sender). Each runner is `async def runner(*, stop: asyncio.Event)` and
returns once `stop` is set (SIGTERM or SIGINT); if one fails, the others are stopped and the
command exits with its error, so a supervisor restarts the whole process."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from telemetry.hl7.listener import hl7_listener_run
from telemetry.hl7.sender import oru_sender_run

Runner = Callable[..., Awaitable[None]]

# Every coroutine of the process; a new one is one more entry.
RUNNERS: tuple[Runner, ...] = (hl7_listener_run, oru_sender_run)


async def run(runners: tuple[Runner, ...], stop: asyncio.Event) -> None:
    async def guarded(runner: Runner) -> None:
        try:
            await runner(stop=stop)
        finally:
            stop.set()  # one runner ending (or failing) ends the process

    async with asyncio.TaskGroup() as group:
        for runner in runners:
            group.create_task(guarded(runner))


class Command(BaseCommand):
    help = "Run the HL7 MLLP process (ADT listener on PERFUSE_HL7_LISTEN) until SIGTERM; see docs/hl7.md."

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            asyncio.run(self._main())
        except* (OSError, ValueError) as failed:  # a port in use, a bad address or TLS file
            raise CommandError("; ".join(str(exc) for exc in failed.exceptions)) from failed

    async def _main(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run(RUNNERS, stop)
