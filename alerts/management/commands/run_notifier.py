from __future__ import annotations

import signal
from types import FrameType
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from alerts.outbox import OutboxSender


class Command(BaseCommand):
    help = "Send the alarm notification outbox (email, webhook) until SIGTERM; see docs/alarms.md."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--poll", type=float, default=1.0, help="seconds between rounds when idle")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            sender = OutboxSender(poll=options["poll"])
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc

        def request_stop(signum: int, frame: FrameType | None) -> None:
            # Only set a flag: the round in progress records its outcomes before the loop ends.
            sender.stop()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        sender.run()
