from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import CommandParser

from config.commands import ResultCommand
from telemetry.management.commands._provisioning import key_answer, public_key_read
from telemetry.services import RegistryError, device_provision


class Command(ResultCommand):
    help = (
        "Register a device and a key; generates an Ed25519 key pair when no public key is given. "
        "With the deployment CA (PERFUSE_PKI_DIR), also issues the key's MQTT client certificate."
    )
    errors = (RegistryError,)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("device_id")
        parser.add_argument("--ward", required=True)
        parser.add_argument("--public-key-file", type=Path)

    def act(self, options: dict[str, Any]) -> tuple[dict[str, Any], str]:
        pem = public_key_read(options["public_key_file"])
        result = device_provision(device_id=options["device_id"], ward_code=options["ward"], public_key_pem=pem)
        out: dict[str, Any] = {"device_id": result.device.device_id, "key_id": result.key.key_id}
        return key_answer(
            out,
            f"device {out['device_id']} key {out['key_id']}",
            private_key_pem=result.private_key_pem,
            certificate_pem=result.certificate_pem,
            ca_pem=result.ca_pem,
        )
