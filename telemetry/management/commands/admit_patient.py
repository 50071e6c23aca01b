from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from telemetry.services import RegistryError, patient_admit


class Command(BaseCommand):
    help = "Create or update a subject and assign a device to it from now on."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("pseudonym")
        parser.add_argument("--ward", required=True)
        parser.add_argument("--device", required=True)
        parser.add_argument("--mrn")
        parser.add_argument("--name")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            patient = patient_admit(
                pseudonym=options["pseudonym"],
                ward_code=options["ward"],
                device_id=options["device"],
                mrn=options["mrn"],
                name=options["name"],
            )
        except RegistryError as exc:
            raise CommandError(str(exc)) from exc
        out = {"pseudonym": patient.pseudonym, "ward": patient.ward.code, "device_id": options["device"]}
        self.stdout.write(
            json.dumps(out) if options["json"] else f"{out['pseudonym']} on {out['ward']} with {out['device_id']}"
        )
