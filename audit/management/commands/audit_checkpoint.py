"""`manage.py audit_checkpoint`: sign the current chain head now (run from cron, e.g. every
minute, so that at most that much trailing history could be removed undetected)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from audit.services import audit_checkpoint


class Command(BaseCommand):
    help = "Write a signed checkpoint of the audit chain head."

    def handle(self, *args: Any, **options: Any) -> None:
        cp = audit_checkpoint()
        if cp is None:
            self.stdout.write("audit trail is empty; nothing to sign")
        else:
            self.stdout.write(f"checkpoint {cp.seq}: event {cp.event_id}, {cp.events} events")
