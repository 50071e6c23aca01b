"""`manage.py restore_archive --day D --ward W [--json]`: an archived ward-day back into the hot
store, row for row, audited (telemetry/archive/restore.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.management.base import CommandParser

from config.commands import ResultCommand
from telemetry.archive.layout import ArchiveError
from telemetry.archive.restore import archive_restore


class Command(ResultCommand):
    help = "Put an archived day of a ward back into the hot store (audited); charts show it again."
    errors = (ArchiveError,)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--day", type=dt.date.fromisoformat, required=True, help="YYYY-MM-DD (UTC)")
        parser.add_argument("--ward", required=True)

    def act(self, options: dict[str, Any]) -> tuple[dict[str, Any], str]:
        restored = archive_restore(day=options["day"], ward_code=options["ward"])
        out = restored.as_json()
        return out, (
            f"{restored.day} {restored.ward}: {restored.inserted} readings restored "
            f"({out['present']} were still there), {restored.batches} signed batches"
        )
