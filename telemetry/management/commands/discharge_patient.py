from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from config.commands import ResultCommand
from config.live import iso
from telemetry.stays import RegistryError, patient_discharge


class Command(ResultCommand):
    help = (
        "End a patient's stay now: device assignments end, open alarms resolve (cause discharged), "
        "live sockets of the patient close and the ward overview drops the patient."
    )
    errors = (RegistryError,)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("pseudonym")

    def act(self, options: dict[str, Any]) -> tuple[dict[str, Any], str]:
        patient = patient_discharge(pseudonym=options["pseudonym"])
        assert patient.discharged_at is not None  # set by the discharge
        out = {"pseudonym": patient.pseudonym, "discharged_at": iso(patient.discharged_at)}
        return out, f"{out['pseudonym']} discharged at {out['discharged_at']}"
