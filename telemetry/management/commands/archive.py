"""`manage.py archive [--day D] [--ward W] [--jobs N] [--every S] [--json]` (docs/archive.md).

Without --day: every ward-day that is due (ended PERFUSE_ARCHIVE_AFTER_DAYS ago or more, within
PERFUSE_ARCHIVE_LOOKBACK_DAYS) and not archived yet; with --every, that again every S seconds
until SIGTERM (make run starts it so). --jobs N archives N ward-days at once, each in a worker
process (default PERFUSE_ARCHIVE_JOBS). Exit 1 when a ward-day is stale (the hot store changed
after it was archived) or an archive object exists with other content.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from config.commands import repeat_until_stopped
from telemetry.archive.layout import ArchiveError
from telemetry.archive.objects import WriteOnceConflict
from telemetry.archive.writer import DayResult, archive_days, archive_due

log = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Archive past days of each ward (Parquet + signed batches + manifest) to PERFUSE_ARCHIVE_URL."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--day", type=dt.date.fromisoformat, help="YYYY-MM-DD (UTC); default: every due day")
        parser.add_argument("--ward", help="only this ward")
        parser.add_argument(
            "--jobs", type=int, help="ward-days archived at once, in worker processes (default PERFUSE_ARCHIVE_JOBS)"
        )
        parser.add_argument("--every", type=float, help="run again every this many seconds, until SIGTERM")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        jobs = options["jobs"] or settings.PERFUSE_ARCHIVE_JOBS
        if jobs < 1:
            raise CommandError("--jobs must be at least 1")
        if options["every"]:
            self._loop(options["every"], jobs)
            return
        try:
            if options["day"]:
                results = archive_days(days=[options["day"]], ward_code=options["ward"], jobs=jobs)
            else:
                results = [
                    r
                    for r in archive_due(now=dt.datetime.now(dt.UTC), jobs=jobs)
                    if not options["ward"] or r.ward == options["ward"]
                ]
        except (ArchiveError, WriteOnceConflict) as exc:
            raise CommandError(str(exc)) from exc
        if options["json"]:
            self.stdout.write(json.dumps({"results": [r.as_json() for r in results]}))
        else:
            for r in results:
                self.stdout.write(_line(r))
            if not results:
                self.stdout.write("nothing to archive")
        if any(r.status == "stale" for r in results):
            sys.exit(1)

    def _loop(self, every: float, jobs: int) -> None:
        def run() -> None:
            for r in archive_due(now=dt.datetime.now(dt.UTC), jobs=jobs):
                (log.warning if r.status == "stale" else log.info)("%s", _line(r))

        log.info("archiver started: every %.0f s", every)
        # A failed run (store unreachable, a conflict) is retried at the next interval.
        repeat_until_stopped(run, every=every, failed=lambda exc: log.exception("archive run failed"))
        log.info("archiver stopped")


def _line(r: DayResult) -> str:
    return f"{r.day} {r.ward}: {r.status}, {r.rows} readings, {r.batches} batches {r.detail}".rstrip()
