from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from config.commands import ResultCommand, aware_time
from telemetry.services import RegistryError, readings_assign


class Command(ResultCommand):
    help = "Give a device's unassigned readings in [--from, --to) to a patient (audited)."
    errors = (RegistryError,)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("device_id")
        parser.add_argument("pseudonym")
        parser.add_argument("--from", dest="start", required=True, type=aware_time)
        parser.add_argument("--to", dest="end", required=True, type=aware_time)

    def act(self, options: dict[str, Any]) -> tuple[dict[str, Any], str]:
        moved = readings_assign(
            device_id=options["device_id"],
            pseudonym=options["pseudonym"],
            start=options["start"],
            end=options["end"],
        )
        out = {"device_id": options["device_id"], "pseudonym": options["pseudonym"], "assigned": moved}
        return out, f"{moved} readings assigned to {options['pseudonym']}"
