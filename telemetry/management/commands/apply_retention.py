"""`manage.py apply_retention [--dry-run] [--json] [--every S]` (docs/retention.md).

One run over every data class: readings and signed batches of archived, verified, unheld
ward-days past their retention, rollups, HL7 messages and expired research exports; with
--every, again every S seconds until SIGTERM (make run starts it so). Exit 1 when a ward-day
past the readings retention is kept for a problem (not archived, not verified, or changed
during the run) rather than for a legal hold.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from config.commands import repeat_until_stopped
from telemetry.lifecycle.retention import RetentionReport, retention_apply

log = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Apply the retention of each data class (readings, signed batches, rollups, HL7 messages)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="report what would be deleted; delete nothing")
        parser.add_argument("--every", type=float, help="run again every this many seconds, until SIGTERM")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["every"]:
            self._loop(options["every"])
            return
        report = retention_apply(dry_run=options["dry_run"])
        if options["json"]:
            self.stdout.write(json.dumps(report.as_json()))
        else:
            self.stdout.write("\n".join(_lines(report)))
        if _blocked(report):
            sys.exit(1)

    def _loop(self, every: float) -> None:
        def run() -> None:
            for line in _lines(retention_apply()):
                log.info("%s", line)

        log.info("retention started: every %.0f s", every)
        # A failed run (archive unreachable, a lock timeout) is retried at the next interval.
        repeat_until_stopped(run, every=every, failed=lambda exc: log.exception("retention run failed"))
        log.info("retention stopped")


def _blocked(report: RetentionReport) -> bool:
    cutoff = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=settings.PERFUSE_RETENTION_READINGS_DAYS)
    return any(
        w.day < cutoff and w.hot_readings and not w.held and (not w.verified or w.problems) for w in report.ward_days
    )


def _lines(report: RetentionReport) -> list[str]:
    verb = "would drop" if report.dry_run else "dropped"
    lines = []
    for w in report.ward_days:
        state = "held" if w.held else ("verified" if w.verified else "not verified")
        problems = f" ({'; '.join(w.problems)})" if w.problems else ""
        lines.append(
            f"{w.day} {w.ward}: {state}, {w.hot_readings} hot readings, {verb} {w.readings_dropped} readings "
            f"and {w.batches_dropped} batches{problems}"
        )
    found = report.as_json()
    lines.append(f"days dropped whole: {', '.join(report.days_dropped) or 'none'}")
    lines.append(f"rollups {verb}: {found['rollups_deleted'] or 'not kept by Perfuse (TimescaleDB)'}")
    lines.append(f"HL7 messages {verb}: {report.hl7_deleted}; research exports expired: {report.research_expired}")
    return lines
