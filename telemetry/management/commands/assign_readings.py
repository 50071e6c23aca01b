from __future__ import annotations

import datetime as dt
import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from telemetry.services import RegistryError, readings_assign


def _time(raw: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(raw)
    if value.tzinfo is None:
        raise ValueError("needs a UTC offset, e.g. 2026-01-18T14:00:00Z")
    return value


class Command(BaseCommand):
    help = "Give a device's unassigned readings in [--from, --to) to a patient (audited)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("device_id")
        parser.add_argument("pseudonym")
        parser.add_argument("--from", dest="start", required=True, type=_time)
        parser.add_argument("--to", dest="end", required=True, type=_time)
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            moved = readings_assign(
                device_id=options["device_id"],
                pseudonym=options["pseudonym"],
                start=options["start"],
                end=options["end"],
            )
        except RegistryError as exc:
            raise CommandError(str(exc)) from exc
        out = {"device_id": options["device_id"], "pseudonym": options["pseudonym"], "assigned": moved}
        self.stdout.write(
            json.dumps(out) if options["json"] else f"{moved} readings assigned to {options['pseudonym']}"
        )
