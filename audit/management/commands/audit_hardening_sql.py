"""`manage.py audit_hardening_sql --app-role ROLE --owner-role ROLE`: print the SQL that gives the
owner role every object and the application role its grants, INSERT-only on the audit tables
(audit/hardening.py). Run it with psql as a superuser after each migrate (scripts/run.sh does)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.hardening import hardening_sql


class Command(BaseCommand):
    help = (
        "Print SQL: the owner role owns everything, the application role may only SELECT and INSERT the audit tables."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--app-role", required=True)
        parser.add_argument("--owner-role", required=True)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            self.stdout.write(hardening_sql(app_role=options["app_role"], owner_role=options["owner_role"]))
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
