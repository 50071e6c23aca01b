"""`manage.py add_staff USERNAME --role ROLE [--ward WARD …] --password-stdin [--json]` (contract §2)."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import CommandError, CommandParser

from audit.access.roles import ROLES
from audit.access.staff import StaffError, staff_upsert, totp_secret_base32
from config.commands import ResultCommand


class Command(ResultCommand):
    help = "Create a staff user with a role, wards and a confirmed TOTP device."
    errors = (StaffError,)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--role", required=True, choices=ROLES)
        parser.add_argument("--ward", action="append", default=[], dest="wards")
        parser.add_argument("--password-stdin", action="store_true", help="read the password from standard input")

    def act(self, options: dict[str, Any]) -> tuple[dict[str, Any], str]:
        if not options["password_stdin"]:
            raise CommandError("--password-stdin is required (passwords never go on the command line)")
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise CommandError("no password on standard input")
        account = staff_upsert(
            username=options["username"], role=options["role"], ward_codes=options["wards"], password=password
        )
        result = {
            "username": account.user.get_username(),
            "role": account.role,
            "totp_secret": totp_secret_base32(account.totp),
        }
        text = (
            f"{'created' if account.created else 'updated'} {result['username']} ({result['role']}); "
            f"TOTP secret {result['totp_secret']}\n{account.totp.config_url}"
        )
        return result, text
