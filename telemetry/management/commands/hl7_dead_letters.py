"""`manage.py hl7_dead_letters`: the ORU messages the EHR refused (ACK AR), for the integration
team; `--requeue ID` sends one again as a new message once the cause is fixed (docs/hl7-results.md)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser
from django.utils import timezone

from audit.trail import SYSTEM
from config.commands import ResultCommand
from config.live import iso
from telemetry.hl7.outbox import oru_dead_letters, oru_requeue


class Command(ResultCommand):
    help = "List the ORU results the EHR refused (AR), or send some again with --requeue ID."
    errors = (LookupError,)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--requeue", type=int, action="append", default=[], metavar="ID")

    def act(self, options: dict[str, Any]) -> tuple[dict[str, Any], str]:
        if options["requeue"]:
            now = timezone.now()
            again = [oru_requeue(message_id=pk, actor=SYSTEM, now=now) for pk in options["requeue"]]
            pairs = {str(pk): row.control_id for pk, row in zip(options["requeue"], again, strict=True)}
            return {"requeued": pairs}, "\n".join(f"{pk} requeued as {cid}" for pk, cid in pairs.items())
        letters = [
            {
                "id": row.pk,
                "control_id": row.control_id,
                "pseudonym": row.payload["pseudonym"],
                "interval_start": iso(row.interval_start),
                "attempts": row.attempts,
                "error": row.last_error,
            }
            for row in oru_dead_letters()
        ]
        lines = [f"{d['id']} {d['control_id']} {d['pseudonym']} {d['interval_start']}: {d['error']}" for d in letters]
        return {"dead_letters": letters}, "\n".join(lines) or "no dead letters"
