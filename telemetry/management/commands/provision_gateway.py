from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import CommandParser

from config.commands import ResultCommand
from telemetry.management.commands._provisioning import key_answer, public_key_read
from telemetry.models import Gateway
from telemetry.services import RegistryError, gateway_provision


class Command(ResultCommand):
    help = "Register an edge gateway and a key; generates an Ed25519 key pair when no public key is given."
    errors = (RegistryError,)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("gateway_id")
        parser.add_argument("--ward", required=True)
        parser.add_argument(
            "--site-wide",
            action="store_true",
            help="may carry devices of every ward on the ward's site (default: of its ward only)",
        )
        parser.add_argument("--public-key-file", type=Path)

    def act(self, options: dict[str, Any]) -> tuple[dict[str, Any], str]:
        result = gateway_provision(
            gateway_id=options["gateway_id"],
            ward_code=options["ward"],
            scope=Gateway.Scope.SITE if options["site_wide"] else Gateway.Scope.WARD,
            public_key_pem=public_key_read(options["public_key_file"]),
        )
        out: dict[str, Any] = {"gateway_id": result.gateway.gateway_id, "key_id": result.key.key_id}
        return key_answer(
            out,
            f"gateway {out['gateway_id']} key {out['key_id']}",
            private_key_pem=result.private_key_pem,
            certificate_pem=result.certificate_pem,
            ca_pem=result.ca_pem,
        )
