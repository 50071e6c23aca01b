from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import CommandError, CommandParser

from config.commands import ResultCommand
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
        pem = None
        if options["public_key_file"]:
            try:
                pem = options["public_key_file"].read_bytes()
            except OSError as exc:
                raise CommandError(f"cannot read public key file: {exc}") from exc
        result = device_provision(device_id=options["device_id"], ward_code=options["ward"], public_key_pem=pem)
        out: dict[str, Any] = {"device_id": result.device.device_id, "key_id": result.key.key_id}
        text = f"device {out['device_id']} key {out['key_id']}"
        if result.private_key_pem is not None:
            out["private_key_pem"] = result.private_key_pem
            text += f"\n{result.private_key_pem}"  # shown once: only its public half is stored
        if result.certificate_pem is not None and result.ca_pem is not None:
            # The MQTT identity (contract 1b): the key's certificate, CN = device id, and the CA.
            out["certificate_pem"], out["ca_pem"] = result.certificate_pem, result.ca_pem
            text += f"\n{result.certificate_pem}"
        return out, text
