from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from config.commands import ResultCommand
from telemetry.services import RegistryError, gateway_key_revoke


class Command(ResultCommand):
    help = "Revoke a gateway key at once; later outer requests signed with it get 401."
    errors = (RegistryError,)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("key_id")

    def act(self, options: dict[str, Any]) -> tuple[dict[str, Any], str]:
        key = gateway_key_revoke(key_id=options["key_id"])
        assert key.revoked_at is not None
        revoked_at = key.revoked_at.isoformat().replace("+00:00", "Z")
        return {"key_id": key.key_id, "revoked_at": revoked_at}, f"key {key.key_id} revoked at {revoked_at}"
