from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.management.base import CommandParser

from config.commands import ResultCommand
from telemetry.services import RegistryError, readings_assign


def _time(raw: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(raw)
    if value.tzinfo is None:
        raise ValueError("needs a UTC offset, e.g. 2026-01-18T14:00:00Z")
    return value


class Command(ResultCommand):
    help = "Give a device's unassigned readings in [--from, --to) to a patient (audited)."
    errors = (RegistryError,)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("device_id")
        parser.add_argument("pseudonym")
        parser.add_argument("--from", dest="start", required=True, type=_time)
        parser.add_argument("--to", dest="end", required=True, type=_time)

    def act(self, options: dict[str, Any]) -> tuple[dict[str, Any], str]:
        moved = readings_assign(
            device_id=options["device_id"],
            pseudonym=options["pseudonym"],
            start=options["start"],
            end=options["end"],
        )
        out = {"device_id": options["device_id"], "pseudonym": options["pseudonym"], "assigned": moved}
        return out, f"{moved} readings assigned to {options['pseudonym']}"
