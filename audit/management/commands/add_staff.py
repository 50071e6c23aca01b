"""`manage.py add_staff USERNAME --role ROLE [--ward WARD …] --password-stdin [--json]` (contract §2)."""

from __future__ import annotations

import json
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.access.roles import ROLES
from audit.access.staff import StaffError, staff_upsert, totp_secret_base32


class Command(BaseCommand):
    help = "Create a staff user with a role, wards and a confirmed TOTP device."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--role", required=True, choices=ROLES)
        parser.add_argument("--ward", action="append", default=[], dest="wards")
        parser.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        if not options["password_stdin"]:
            raise CommandError("--password-stdin is required (passwords never go on the command line)")
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise CommandError("no password on standard input")
        try:
            account = staff_upsert(
                username=options["username"], role=options["role"], ward_codes=options["wards"], password=password
            )
        except StaffError as exc:
            raise CommandError(str(exc)) from exc
        result = {
            "username": account.user.get_username(),
            "role": account.role,
            "totp_secret": totp_secret_base32(account.totp),
        }
        if options["json"]:
            self.stdout.write(json.dumps(result))
        else:
            self.stdout.write(
                f"{'created' if account.created else 'updated'} {result['username']} ({result['role']}); "
                f"TOTP secret {result['totp_secret']}\n{account.totp.config_url}"
            )
