from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from telemetry.services import RegistryError, device_key_revoke


class Command(BaseCommand):
    help = "Revoke a device key at once; later requests signed with it get 401."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("key_id")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            key = device_key_revoke(key_id=options["key_id"])
        except RegistryError as exc:
            raise CommandError(str(exc)) from exc
        assert key.revoked_at is not None
        revoked_at = key.revoked_at.isoformat().replace("+00:00", "Z")
        if options["json"]:
            self.stdout.write(json.dumps({"key_id": key.key_id, "revoked_at": revoked_at}))
        else:
            self.stdout.write(f"key {key.key_id} revoked at {revoked_at}")
