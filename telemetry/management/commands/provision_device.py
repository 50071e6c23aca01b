from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from telemetry.services import RegistryError, device_provision


class Command(BaseCommand):
    help = "Register a device and a key; generates an Ed25519 key pair when no public key is given."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("device_id")
        parser.add_argument("--ward", required=True)
        parser.add_argument("--public-key-file", type=Path)
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        pem = None
        if options["public_key_file"]:
            try:
                pem = options["public_key_file"].read_bytes()
            except OSError as exc:
                raise CommandError(f"cannot read public key file: {exc}") from exc
        try:
            result = device_provision(device_id=options["device_id"], ward_code=options["ward"], public_key_pem=pem)
        except RegistryError as exc:
            raise CommandError(str(exc)) from exc
        out: dict[str, Any] = {"device_id": result.device.device_id, "key_id": result.key.key_id}
        if result.private_key_pem is not None:
            out["private_key_pem"] = result.private_key_pem
        if options["json"]:
            self.stdout.write(json.dumps(out))
        else:
            self.stdout.write(f"device {out['device_id']} key {out['key_id']}")
            if result.private_key_pem:
                self.stdout.write(result.private_key_pem)
