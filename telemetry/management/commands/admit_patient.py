from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from config.commands import ResultCommand
from telemetry.services import RegistryError, patient_admit


class Command(ResultCommand):
    help = "Create or update a subject and assign a device to it from now on."
    errors = (RegistryError,)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("pseudonym")
        parser.add_argument("--ward", required=True)
        parser.add_argument("--device", required=True)
        parser.add_argument("--mrn")
        parser.add_argument("--name")

    def act(self, options: dict[str, Any]) -> tuple[dict[str, Any], str]:
        patient = patient_admit(
            pseudonym=options["pseudonym"],
            ward_code=options["ward"],
            device_id=options["device"],
            mrn=options["mrn"],
            name=options["name"],
        )
        out = {"pseudonym": patient.pseudonym, "ward": patient.ward.code, "device_id": options["device"]}
        return out, f"{out['pseudonym']} on {out['ward']} with {out['device_id']}"
