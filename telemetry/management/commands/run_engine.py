from __future__ import annotations

import signal
from types import FrameType
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from telemetry.engine import Engine, load_processors


class Command(BaseCommand):
    help = (
        "Run the stream engine: feed newly committed readings to the configured processors until SIGTERM. "
        "Several may run: they share the stream's partitions (PERFUSE_ENGINE_PARTITIONS)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--interval", type=float, default=None, help="seconds to wait when caught up")
        parser.add_argument(
            "--no-listen",
            action="store_true",
            help="poll only, no LISTEN for ingest commits (e.g. behind a transaction-mode connection pooler)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            processors = load_processors()
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        engine = Engine(processors, interval=options["interval"], listen=not options["no_listen"])

        def request_stop(signum: int, frame: FrameType | None) -> None:
            # Only set a flag: the batch in progress finishes and commits before the loop ends.
            engine.stop()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        try:
            engine.run()
        except ImproperlyConfigured as exc:  # the partition cursors cannot be converted exactly
            raise CommandError(str(exc)) from exc
