"""`manage.py audit_verify [--json]` (contract §2): exit 0 when the chain is intact, 1 naming the
first bad event otherwise. --json prints {"events", "ok", "first_bad"}."""

from __future__ import annotations

import json
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from audit.verify import chain_verify


class Command(BaseCommand):
    help = "Walk the audit hash chain and its signed checkpoints; name the first bad event."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        result = chain_verify()
        if options["json"]:
            self.stdout.write(json.dumps(result.as_contract()))
        elif result.ok:
            self.stdout.write(f"audit chain intact: {result.events} events, {result.checkpoints} signed checkpoints")
        if not result.ok:
            self.stderr.write(f"audit chain broken at event {result.first_bad}: {result.reason}")
            sys.exit(1)
