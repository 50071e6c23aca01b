"""`manage.py audit_anchor_cut --source URL --until TIME [--json]`: after a point-in-time restore,
start the restored database's anchor (PERFUSE_AUDIT_ANCHOR, new and empty) with the entries of
the old anchor (`--source`) created at or before the restore's target time (docs/backup.md).

The restored database lacks every checkpoint signed after TIME, so against the old anchor it
fails verification, naming the first event the restore erased — which is true, and the old
anchor is kept as it is for the incident. Against the cut anchor it verifies everything
anchored up to TIME, and audit_checkpoint continues the new anchor from there."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import CommandError, CommandParser

from audit.anchor import AnchorError, anchor_cut, anchor_from_url, configured_anchor
from config.commands import ResultCommand, aware_time


class Command(ResultCommand):
    help = "Start a new audit anchor with the old anchor's entries up to the target time of a restore."
    errors = (AnchorError,)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--source", required=True, help="URL of the anchor of the database before the restore")
        parser.add_argument(
            "--until", required=True, type=aware_time, help="the restore's recovery_target_time (with its time zone)"
        )

    def act(self, options: dict[str, Any]) -> tuple[dict[str, Any], str]:
        target = configured_anchor()
        if target is None:
            raise CommandError("PERFUSE_AUDIT_ANCHOR is not set: it names the new anchor")
        if options["source"] == settings.PERFUSE_AUDIT_ANCHOR:
            raise CommandError("--source is PERFUSE_AUDIT_ANCHOR itself: the cut goes into a new anchor")
        cut = anchor_cut(source=anchor_from_url(options["source"]), target=target, until=options["until"])
        out = {"copied": cut.copied, "dropped": cut.dropped, "last_seq": cut.last_seq}
        return out, f"new anchor: {cut.copied} checkpoints up to seq {cut.last_seq}; {cut.dropped} later ones left out"
