"""`manage.py verify_batch (--batch ID | --device DEV --seq N [--metric M --sample-time T])
[--source hot|archive --day D [--ward W]] [--json]`: re-verify the device's Ed25519 signature
over a kept batch and that the stored readings are what it signed (telemetry/archive/batches.py).
A reading (device, metric, seq, sample time) names the batch that committed it. Exit 0 when
every batch found verifies, 1 otherwise; --json prints {"ok", "source", "batches": [...]}.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from config.commands import aware_time
from telemetry.archive.batches import BatchNotFound, Query, batches_verify
from telemetry.archive.layout import ArchiveError


class Command(BaseCommand):
    help = "Re-verify a device's signature over a kept batch and the readings stored from it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--batch", type=int, help="the kept batch's id")
        parser.add_argument("--device", help="device id (with --seq)")
        parser.add_argument("--seq", type=int)
        parser.add_argument("--metric", help="with --sample-time: the reading's batch")
        parser.add_argument("--sample-time", type=aware_time)
        parser.add_argument("--source", choices=["hot", "archive"], default="hot")
        parser.add_argument("--day", type=dt.date.fromisoformat, help="the archived day (--source archive)")
        parser.add_argument("--ward", help="the archived ward (default: every ward of the day)")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        query = Query(options["batch"], options["device"], options["seq"], options["metric"], options["sample_time"])
        try:
            checks = batches_verify(
                query=query, source=options["source"], day=options["day"], ward_code=options["ward"]
            )
        except (BatchNotFound, ArchiveError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        ok = all(c.ok for c in checks)
        if options["json"]:
            self.stdout.write(
                json.dumps({"ok": ok, "source": options["source"], "batches": [c.as_json() for c in checks]})
            )
        else:
            for c in checks:
                verdict = "verified" if c.ok else "FAILED"
                self.stdout.write(
                    f"batch {c.record.id} of {c.record.device} ({options['source']}): {verdict}; signature "
                    f"{'valid' if c.signature_valid else 'INVALID'}, {c.matched}/{c.readings} readings match"
                )
                for problem in c.problems:
                    self.stdout.write(f"  {problem}")
        if not ok:
            sys.exit(1)
