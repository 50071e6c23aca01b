"""`manage.py deactivate_staff USERNAME`: disable the account, end its sessions, close its sockets."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.access.staff import StaffError, staff_deactivate


class Command(BaseCommand):
    help = "Disable a staff account at once (sessions ended, sockets closed, audited)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            ended = staff_deactivate(username=options["username"])
        except StaffError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"{options['username']} disabled; {ended} session(s) ended")
