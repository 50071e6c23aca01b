from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from config.commands import ResultCommand
from telemetry.stays import RegistryError, patient_admit


class Command(ResultCommand):
    help = "Create, readmit or move a subject to a ward; with --device, that device measures it from now on."
    errors = (RegistryError,)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("pseudonym")
        parser.add_argument("--ward", required=True)
        parser.add_argument("--device", help="the device measuring the patient from now on (optional)")
        parser.add_argument("--bed", default="", help="the bed label shown on the ward card")
        parser.add_argument("--mrn")
        parser.add_argument("--name")

    def act(self, options: dict[str, Any]) -> tuple[dict[str, Any], str]:
        patient = patient_admit(
            pseudonym=options["pseudonym"],
            ward_code=options["ward"],
            device_id=options["device"],
            mrn=options["mrn"],
            name=options["name"],
            bed=options["bed"],
        )
        out = {"pseudonym": patient.pseudonym, "ward": patient.ward.code, "device_id": options["device"]}
        device = f" with {out['device_id']}" if out["device_id"] else " (no device yet)"
        return out, f"{out['pseudonym']} on {out['ward']}{device}"
