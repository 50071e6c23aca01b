"""`manage.py audit_checkpoint [--every SECONDS]`: sign the current chain head and anchor it
outside the database — once (from cron, e.g. every minute), or every SECONDS until SIGTERM
(`make run`). At most that much trailing history could be removed before it is anchored, and
audit_verify fails once events wait longer than PERFUSE_AUDIT_CHECKPOINT_MAX_AGE."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import DatabaseError

from audit.services import audit_checkpoint
from config.commands import repeat_until_stopped


class Command(BaseCommand):
    help = "Write a signed, anchored checkpoint of the audit chain head (once, or every --every seconds)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--every", type=float, default=0.0, help="repeat every SECONDS until SIGTERM")

    def handle(self, *args: Any, **options: Any) -> None:
        if not options["every"]:
            self._checkpoint()
            return
        # A database restart must not end the job: the run is retried at the next interval.
        repeat_until_stopped(
            lambda: self._checkpoint(quiet=options["verbosity"] < 2),
            every=options["every"],
            failed=lambda exc: self.stderr.write(f"audit checkpoint failed, retrying: {exc}"),
            errors=(DatabaseError,),
        )

    def _checkpoint(self, *, quiet: bool = False) -> None:
        cp = audit_checkpoint()
        if quiet:
            return
        if cp is None:
            self.stdout.write("audit trail is empty; nothing to sign")
        else:
            self.stdout.write(f"checkpoint {cp.seq}: event {cp.event_id}, {cp.events} events")
